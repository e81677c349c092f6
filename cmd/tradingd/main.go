// Command tradingd is the trading API: `serve` runs it, `migrate` brings the database
// schema up to date, `user add` creates an account, `version` prints the build's version.
//
// Every setting is a flag with an environment twin (api.md, "Process and configuration");
// see config.go. Exit codes: 0 success (also after a graceful SIGTERM), 1 failure at run
// time (database, schema, duplicate user), 2 a bad command line or a missing or malformed
// setting, reported on one line that names the setting.
//
// Lifecycle of serve: validate every setting (exit 2) → bind both ports → the admin port
// answers at once (/healthz 200, /readyz 503 "starting") → check the schema: too old is exit 1
// with "run `tradingd migrate`"; a database that cannot be reached is retried with backoff
// for up to two minutes (then exit 1), so that a database starting alongside does not cause
// a crash loop; refused credentials or a missing database fail at once → create the demo
// users and the bootstrap admin when asked → serve the API (/readyz pings the database).
// SIGTERM or SIGINT: /readyz turns 503, the API stops accepting, in-flight requests get
// SHUTDOWN_GRACE to finish, the pool is closed, exit 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	trading "github.com/findmy/trading-operator/runtime"
)

const usageText = `Usage:
  tradingd serve [flags]                               run the trading API
  tradingd migrate [flags]                             apply database migrations and exit
  tradingd user add --username U --role R [flags]      create a user; the password is read from stdin
  tradingd version                                     print the version

Every flag has an environment twin: --database-url is DATABASE_URL, --jwt-keys is JWT_KEYS.
Run "tradingd <command> -h" for a command's flags.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], getenv, stderr)
	case "migrate":
		err = migrate(ctx, args[1:], getenv, stdout, stderr)
	case "user":
		if len(args) < 2 || args[1] != "add" {
			err = usageErrorf("user: the only subcommand is \"user add\"")
		} else {
			err = userAdd(ctx, args[2:], getenv, stdin, stdout, stderr)
		}
	case "version":
		fmt.Fprintln(stdout, trading.Version)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
	default:
		err = usageErrorf("unknown command %q", args[0])
	}
	return report(err, stdout, stderr)
}

// helpRequested carries the flag set whose -h was asked for, so that its flags are printed.
type helpRequested struct{ fs *flag.FlagSet }

func (h *helpRequested) Error() string { return "help requested" }

// report prints err on one line and maps it to the exit code.
func report(err error, stdout, stderr io.Writer) int {
	var (
		help *helpRequested
		ue   *usageError
		ce   *configError
	)
	var f *failure
	if errors.As(err, &f) {
		// The command's logger exists: the last line is in its format too (LOG_FORMAT=json:
		// every line of stderr is JSON, a log collector parses them all).
		f.log.Error("tradingd: " + oneLine(f.err.Error()))
		return exitCode(f.err)
	}
	switch {
	case err == nil:
		return 0
	case errors.As(err, &help):
		help.fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "Usage of %s:\n", help.fs.Name())
		help.fs.PrintDefaults()
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "tradingd: %s\n%s", oneLine(ue.msg), usageText)
		return 2
	case errors.As(err, &ce):
		fmt.Fprintf(stderr, "tradingd: %s\n", oneLine(ce.msg))
		return 2
	default:
		fmt.Fprintf(stderr, "tradingd: %s\n", oneLine(err.Error()))
		return 1
	}
}

// exitCode is 2 for a bad command line or setting, 1 for any other failure.
func exitCode(err error) int {
	var (
		ue *usageError
		ce *configError
	)
	if errors.As(err, &ue) || errors.As(err, &ce) {
		return 2
	}
	return 1
}

// failure is an error of a command that has made its logger: report writes it through that
// logger instead of as plain text.
type failure struct {
	err error
	log *slog.Logger
}

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

// logFailure, deferred with the command's named error once its logger exists, marks a
// returned error to be reported through that logger.
func logFailure(log *slog.Logger, err *error) {
	if *err != nil {
		*err = &failure{err: *err, log: log}
	}
}

// newLogger is the process's structured logger: LOG_FORMAT to stderr at LOG_LEVEL. It also
// becomes slog's default so that libraries that log (goose) speak the same format.
func newLogger(c *Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	var h slog.Handler
	if c.LogFormat == "text" {
		h = slog.NewTextHandler(w, opts)
	} else {
		h = slog.NewJSONHandler(w, opts)
	}
	logger := slog.New(h)
	slog.SetDefault(logger)
	return logger
}
