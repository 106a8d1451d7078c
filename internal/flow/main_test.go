package flow_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine the pipeline starts must have ended by the time the tests
// are over: Run owns them all.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
