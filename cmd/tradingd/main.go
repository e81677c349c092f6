// Command tradingd is the trading API: `serve` runs it, `migrate` brings the database
// schema up to date, `user add` creates an account, `version` prints the build's version.
//
// Every setting is a flag with an environment twin (api.md, "Process and configuration");
// see config.go. Exit codes: 0 success (also after a graceful SIGTERM), 1 failure at run
// time (database, schema, duplicate user), 2 a bad command line or a missing or malformed
// setting, reported on one line that names the setting. serve's and migrate's failure line
// also goes to TERMINATION_LOG when that file exists (Kubernetes' termination message).
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
	"io/fs"
	"log/slog"
	"os"
	"strings"

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
	var (
		err error
		// termLog is where a failure's line goes besides stderr (TERMINATION_LOG), "" for a
		// command that writes none: `user add` is also run in the runtime's container
		// (kubectl exec), whose termination message would then tell of it.
		termLog string
	)
	switch args[0] {
	case "serve":
		termLog = terminationLog(serveSettings, args[1:], getenv)
		err = serve(ctx, args[1:], getenv, stderr)
	case "migrate":
		termLog = terminationLog(migrateSettings, args[1:], getenv)
		err = migrate(ctx, args[1:], getenv, stdout, stderr)
	case "user":
		if len(args) < 2 || args[1] != "add" {
			err = usageErrorf("user: the only subcommand is \"user add\"")
		} else {
			err = userAdd(ctx, args[2:], getenv, stdin, stdout, stderr)
		}
	case "version":
		// It takes nothing: `version --json` printed the plain version and exit 0, so a
		// script could not tell that its flag was not understood.
		if len(args) > 1 {
			err = usageErrorf("version: unexpected argument %q", args[1])
		} else {
			fmt.Fprintln(stdout, trading.Version)
		}
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
	default:
		err = usageErrorf("unknown command %q", args[0])
	}
	return report(err, termLog, stdout, stderr)
}

// helpRequested carries the flag set whose -h was asked for, so that its flags are printed.
type helpRequested struct{ fs *flag.FlagSet }

func (h *helpRequested) Error() string { return "help requested" }

// report prints err on one line, also to the termination log termLog (reportTermination),
// and maps it to the exit code. In a pod stderr is only in the logs; the termination message
// is what `kubectl describe pod` and the operator's conditions show of a container that
// exited.
func report(err error, termLog string, stdout, stderr io.Writer) int {
	var (
		help *helpRequested
		ue   *usageError
		ce   *configError
	)
	var f *failure
	if errors.As(err, &f) {
		// The command's logger exists: the last line is in its format too (LOG_FORMAT=json:
		// every line of stderr is JSON, a log collector parses them all).
		line := "tradingd: " + oneLine(f.err.Error())
		f.log.Error(line)
		reportFailure(termLog, line)
		return exitCode(f.err)
	}
	var line string
	switch {
	case err == nil:
		return 0
	case errors.As(err, &help):
		help.fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "Usage of %s:\n", help.fs.Name())
		help.fs.PrintDefaults()
		return 0
	case errors.As(err, &ue):
		line = "tradingd: " + oneLine(ue.msg)
		fmt.Fprintf(stderr, "%s\n%s", line, usageText)
	case errors.As(err, &ce):
		line = "tradingd: " + oneLine(ce.msg)
		fmt.Fprintln(stderr, line)
	default:
		line = "tradingd: " + oneLine(err.Error())
		fmt.Fprintln(stderr, line)
	}
	reportFailure(termLog, line)
	return exitCode(err)
}

// reportFailure writes a failure's line to the termination log path ("" : none). An error
// writing it is not reported: the line is on stderr already, and a second line there would
// hide the one that says why.
func reportFailure(path, line string) {
	if path != "" {
		_ = reportTermination(path, line+"\n")
	}
}

// maxTerminationMessage is as much of a termination log as the kubelet reads.
const maxTerminationMessage = 4096

// reportTermination writes text to path only when the file is there: in a Kubernetes
// container the kubelet mounted it, and elsewhere (a laptop, as root) nothing is created
// in /dev. Text beyond maxTerminationMessage is cut here, where the cut can be marked and
// keep UTF-8 whole, rather than by the kubelet.
func reportTermination(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(text) > maxTerminationMessage {
		text = strings.ToValidUTF8(text[:maxTerminationMessage-len("...\n")], "") + "...\n"
	}
	_, err = f.WriteString(text)
	return errors.Join(err, f.Close())
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
