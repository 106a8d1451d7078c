package demo

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The demo is the real pipeline end to end on kfake: it must account for every
// produced record, dead-letter exactly the poison, show backpressure, and open
// the circuit breaker in the failing phase and close it in the recovered one.
func TestDemoLosesNothingAndShowsBackpressure(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the 12 s demo")
	}
	var out bytes.Buffer
	sum, err := Run(t.Context(), Options{Duration: 12 * time.Second, Rate: 2000, Listen: "127.0.0.1:0",
		OutPath: filepath.Join(t.TempDir(), "orders.jsonl"), Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary: %+v", sum)
	if sum.Lost != 0 {
		t.Errorf("lost %d records", sum.Lost)
	}
	if sum.PoisonInjected == 0 || sum.DeadLettered != sum.PoisonInjected {
		t.Errorf("dead-lettered %d, injected %d poison records", sum.DeadLettered, sum.PoisonInjected)
	}
	if sum.Produced == 0 || sum.WrittenUnique+sum.DeadLettered+sum.Uncommitted != sum.Produced {
		t.Errorf("written %d + dead-lettered %d + uncommitted %d != produced %d",
			sum.WrittenUnique, sum.DeadLettered, sum.Uncommitted, sum.Produced)
	}
	if sum.Pauses == 0 {
		t.Error("the slow-sink phase never filled the gate")
	}
	if sum.SinkRetries == 0 {
		t.Error("the failing-sink phase never failed a write")
	}
	if sum.BreakerOpens < 1 {
		t.Error("the failing-sink phase never opened the circuit breaker")
	}
	if sum.BreakerState != "closed" {
		t.Errorf("the circuit breaker is %q at the end, want closed after the recovered phase", sum.BreakerState)
	}
	if !strings.Contains(out.String(), "breaker=open") && !strings.Contains(out.String(), "breaker=half-open") {
		t.Errorf("no status line shows the breaker open:\n%s", out.String())
	}
	if sum.PeakBufferBytes > sum.BudgetBytes {
		t.Errorf("buffer peaked at %d bytes, budget %d", sum.PeakBufferBytes, sum.BudgetBytes)
	}
	if lines := strings.Count(out.String(), "\n"); lines < 10 {
		t.Errorf("%d status lines for a 12 s run:\n%s", lines, out.String())
	}
}
