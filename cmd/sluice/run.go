package main

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/daemon"
	"github.com/sluicehq/sluice/internal/obs"
)

func runCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Consume the configured topics and write them to the sink until SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			log, err := obs.NewLogger(cfg.Observability.LogLevel, cfg.Observability.LogFormat)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			defer func() { _ = log.Sync() }()
			memLimit := "GOMEMLIMIT"
			if os.Getenv("GOMEMLIMIT") == "" {
				limit := config.MemoryLimit(cfg)
				debug.SetMemoryLimit(int64(limit))
				memLimit = limit.String()
			}
			ctx := cmd.Context()
			d, err := daemon.New(ctx, cfg, daemon.Options{Logger: log, WrapMapper: testMapperHook})
			if err != nil {
				log.Error("sluice cannot start", zap.Error(err))
				return &exitError{code: 1, err: err}
			}
			log.Info("sluice starting", zap.String("version", version), zap.String("group", cfg.Kafka.Group),
				zap.Strings("topics", cfg.Kafka.Topics), zap.String("sink", cfg.Sink.Type),
				zap.String("listen", cfg.Observability.Listen), zap.String("memory_limit", memLimit))
			if err := d.Run(ctx); err != nil {
				log.Error("sluice stopped on an error", zap.Error(err))
				return &exitError{code: 1, err: err}
			}
			log.Info("sluice stopped cleanly")
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "the YAML configuration file (required)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func validateCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check a configuration file and print the effective configuration, secrets redacted",
		Long: "validate loads the file as 'sluice run' would (defaults, SLUICE_* environment overrides, ${VAR} and *_file secrets),\n" +
			"prints the effective configuration with secrets redacted and exits 0, or lists every problem with its key path and exits 1.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("%s is not valid:\n%w", path, err)}
			}
			out, err := config.Redacted(cfg)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "# %s is valid; effective configuration (secrets redacted):\n%s", path, out)
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "the YAML configuration file (required)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
