package http_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/internal/flow"
	httpsink "github.com/sluicehq/sluice/internal/sink/http"
)

// The sink is what flow writes to and maps with.
var (
	_ flow.Sink   = (*httpsink.Sink)(nil)
	_ flow.Mapper = (*httpsink.Sink)(nil)
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
