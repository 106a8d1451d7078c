// Package obs is how an operator observes sluice: the zap logger it logs with
// and the HTTP server that exposes /metrics, /healthz, /readyz and /status.
//
// There is no package-level state: NewLogger returns a logger for cmd/sluice to
// pass down, and a Server serves the Gatherer and callbacks it is given.
// Concurrency contract: a *zap.Logger is safe for concurrent use; a Server's Run
// owns every goroutine the server starts and returns only after all of them
// have stopped; Addr may be called from any goroutine.
package obs

import (
	"fmt"
	"io"
	"os"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewLogger returns a logger writing to stderr at level (debug, info, warn or
// error; empty is info) in format (json or console; empty is json), with ISO
// 8601 timestamps. Errors name the observability key that holds the bad value.
func NewLogger(level, format string) (*zap.Logger, error) {
	return newLogger(os.Stderr, level, format)
}

func newLogger(w io.Writer, level, format string) (*zap.Logger, error) {
	lvl, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "ts"
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder

	var enc zapcore.Encoder
	switch strings.ToLower(format) {
	case "", "json":
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("observability.log_format: unknown format %q (want json or console)", format)
	}
	ws := zapcore.Lock(zapcore.AddSync(w))
	core := zapcore.NewCore(enc, ws, lvl)
	return zap.New(core, zap.AddCaller(), zap.ErrorOutput(ws), zap.AddStacktrace(zapcore.DPanicLevel)), nil
}

func parseLevel(level string) (zapcore.Level, error) {
	switch strings.ToLower(level) {
	case "debug":
		return zapcore.DebugLevel, nil
	case "", "info":
		return zapcore.InfoLevel, nil
	case "warn":
		return zapcore.WarnLevel, nil
	case "error":
		return zapcore.ErrorLevel, nil
	default:
		return 0, fmt.Errorf("observability.log_level: unknown level %q (want debug, info, warn or error)", level)
	}
}
