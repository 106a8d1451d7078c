package postgres

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/internal/flow"
)

// The sink is what flow writes to and maps with.
var (
	_ flow.Sink   = (*Sink)(nil)
	_ flow.Mapper = (*Sink)(nil)
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
