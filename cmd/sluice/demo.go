package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluicehq/sluice/internal/demo"
	"github.com/sluicehq/sluice/internal/obs"
)

func demoCmd() *cobra.Command {
	var (
		duration time.Duration
		rate     int
		pgDSN    string
		out      string
		logLevel string
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the real pipeline on an in-process Kafka with a synthetic producer (nothing to install)",
		Long: "demo starts an in-process Kafka (franz-go's kfake), produces JSON orders with poison records and bursts,\n" +
			"and runs sluice's real pipeline into a JSON-lines file (or PostgreSQL with --pg-dsn), through a slow-sink\n" +
			"and a failing-sink phase. It serves /metrics, /status, /healthz and /readyz on 127.0.0.1:9108\n" +
			"(SLUICE_OBSERVABILITY_LISTEN overrides), prints a status line a second and ends with one JSON summary.\n" +
			"It exits 0 only when no produced record was lost.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := obs.NewLogger(logLevel, "console")
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			listen := os.Getenv("SLUICE_OBSERVABILITY_LISTEN")
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "sluice demo: %s on an in-process Kafka, 6 partitions; sink: %s\n", duration, sinkName(pgDSN))
			sum, err := demo.Run(cmd.Context(), demo.Options{Duration: duration, Rate: rate, PGDSN: pgDSN, OutPath: out,
				Listen: listen, Out: w, Logger: log})
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			line, _ := json.Marshal(sum)
			fmt.Fprintln(w, string(line))
			if sum.Lost != 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d record(s) were lost", sum.Lost)}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&duration, "duration", 20*time.Second, "how long to run")
	cmd.Flags().IntVar(&rate, "rate", 2000, "base records per second produced (bursts go five times higher)")
	cmd.Flags().StringVar(&pgDSN, "pg-dsn", "", "write to this PostgreSQL instead of a file (table public.sluice_demo_orders is recreated)")
	cmd.Flags().StringVar(&out, "out", "", "the file sink's output path (default: a new temporary directory)")
	cmd.Flags().StringVar(&logLevel, "log-level", "warn", "log level of sluice's own log lines (stderr)")
	return cmd
}

func sinkName(dsn string) string {
	if dsn != "" {
		return "PostgreSQL table public.sluice_demo_orders"
	}
	return "JSON-lines file"
}
