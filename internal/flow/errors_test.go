package flow_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/sluicehq/sluice/internal/flow"
)

func TestClassify(t *testing.T) {
	errDown := errors.New("connection reset by peer")
	tests := []struct {
		name string
		err  error
		want flow.Class
	}{
		{"transient", &flow.TransientError{Err: errDown}, flow.ClassTransient},
		{"transient with Retry-After, wrapped", fmt.Errorf("write: %w", &flow.TransientError{Err: errDown, RetryAfter: 1}), flow.ClassTransient},
		{"unclassified error", errDown, flow.ClassTransient},
		{"write deadline", context.DeadlineExceeded, flow.ClassTransient},
		{"rejected rows", &flow.RejectedError{Rows: []int{1}, Err: errDown}, flow.ClassRejected},
		{"rejected batch, wrapped", fmt.Errorf("copy: %w", &flow.RejectedError{Err: errDown}), flow.ClassRejected},
		{"poison alone is not a sink class", flow.Mapping(errDown), flow.ClassTransient},
		{"fatal", &flow.FatalError{Err: errDown}, flow.ClassFatal},
		{"fatal, wrapped", fmt.Errorf("write: %w", &flow.FatalError{Err: errDown}), flow.ClassFatal},
		{"fatal wins over rejected", &flow.FatalError{Err: &flow.RejectedError{Err: errDown}}, flow.ClassFatal},
		{"fatal wins over transient", &flow.TransientError{Err: &flow.FatalError{Err: errDown}}, flow.ClassFatal},
		{"rejected wins over transient", &flow.TransientError{Err: &flow.RejectedError{Err: errDown}}, flow.ClassRejected},
		{"joined fatal and transient", errors.Join(&flow.TransientError{Err: errDown}, &flow.FatalError{Err: errDown}), flow.ClassFatal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := flow.Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestErrorsUnwrapToTheirCause(t *testing.T) {
	cause := errors.New("boom")
	for _, err := range []error{
		&flow.TransientError{Err: cause},
		&flow.RejectedError{Err: cause},
		&flow.FatalError{Err: cause},
		flow.Decode(cause),
		flow.Mapping(cause),
	} {
		if !errors.Is(err, cause) {
			t.Errorf("%T %q does not unwrap to its cause", err, err)
		}
	}
	if got := flow.Decode(cause).Reason; got != flow.ReasonDecode {
		t.Errorf("Decode(...).Reason = %q, want %q", got, flow.ReasonDecode)
	}
	if got := flow.Mapping(cause).Reason; got != flow.ReasonMapping {
		t.Errorf("Mapping(...).Reason = %q, want %q", got, flow.ReasonMapping)
	}
}
