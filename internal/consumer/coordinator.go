package consumer

import (
	"context"
	"errors"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
)

// AwaitCoordinator runs a request to the group's coordinator, again and
// again while the broker says the coordinator is not available, loading, or
// elsewhere, until ctx ends. A coordinator moves or reloads after a broker
// restart and answers so while its log is slow to write; franz-go retries
// most such answers itself, but not a FindCoordinator that returns them, and
// one-shot commands (replay, tests) should wait out that blip rather
// than fail.
func AwaitCoordinator(ctx context.Context, req func() error) error {
	wait := 100 * time.Millisecond
	for {
		err := req()
		if !errors.Is(err, kerr.CoordinatorNotAvailable) && !errors.Is(err, kerr.CoordinatorLoadInProgress) &&
			!errors.Is(err, kerr.NotCoordinator) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}
