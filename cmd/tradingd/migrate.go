package main

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/findmy/trading-operator/runtime/postgres"
)

// migrate applies the pending migrations and prints the schema version. Safe to run
// concurrently (replicas, Jobs) and repeatedly: postgres.Migrate holds an advisory lock.
func migrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) (err error) {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	fs := newFlagSet("migrate")
	cfg, err := load(fs, migrateSettings, args, getenv)
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("migrate: unexpected argument %q", fs.Arg(0))
	}
	if err := parseDSN(cfg.DatabaseURL); err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	defer logFailure(logger, &err)
	logger.Info("migrating", "database", redactDSN(cfg.DatabaseURL))
	version, err := postgres.Migrate(ctx, cfg.DatabaseURL, logger)
	if err != nil {
		return fmt.Errorf("migrate: %v", cause(err))
	}
	line := postgres.SchemaReport(version)
	fmt.Fprint(stdout, line)
	if err := reportTermination(cfg.TerminationLog, line); err != nil {
		// The schema is migrated; only the operator's SCHEMA column falls back to the tag.
		logger.Warn("the schema version could not be written to the termination log", "path", cfg.TerminationLog, "error", err)
	}
	return nil
}
