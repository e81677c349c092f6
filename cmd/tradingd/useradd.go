package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/postgres"
)

// maxPasswordLine bounds what is read from stdin: far above bcrypt's 72 bytes, so that a
// long password is reported as too long rather than cut.
const maxPasswordLine = 4096

// userAdd creates a user. The password is the first line of stdin, so that it never
// appears in the process list or the shell history: `printf '%s\n' "$PW" | tradingd user add ...`.
func userAdd(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) (err error) {
	fs := newFlagSet("user add")
	username := fs.String("username", "", "name of the new user (required)")
	role := fs.String("role", "", "trader, risk or admin (required)")
	cfg, err := load(fs, dbSettings, args, getenv)
	if err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usageErrorf("user add: unexpected argument %q", fs.Arg(0))
	case *username == "":
		return usageErrorf("user add: --username is required")
	case *role == "":
		return usageErrorf("user add: --role is required (trader, risk or admin)")
	}
	if err := parseDSN(cfg.DatabaseURL); err != nil {
		return err
	}
	r, err := trading.ParseRole(*role)
	if err != nil {
		return usageErrorf("user add: --role %q: %s", *role, trading.ErrorMessage(err))
	}
	// Checked here too, not only by CreateUser: a name no login could use is a bad command
	// line (exit 2), said before a password is asked for or the database is touched.
	if !trading.ValidUsername(*username) {
		return usageErrorf("user add: --username %q: %s", *username, trading.UsernameRule)
	}
	var password string
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		password, err = promptPassword(int(f.Fd()), *username, stderr)
	} else {
		password, err = readPassword(stdin)
	}
	if err != nil {
		return fmt.Errorf("user add: %v", err)
	}
	logger := newLogger(cfg, stderr)
	defer logFailure(logger, &err)

	db, err := postgres.Open(ctx, postgres.Config{URL: cfg.DatabaseURL, MaxConns: 2, MinConns: 1, QueryTimeout: queryTimeout})
	if err != nil {
		return settingError("DATABASE_URL", errors.New(strings.TrimPrefix(trading.ErrorMessage(err), "DATABASE_URL ")))
	}
	defer db.Close()
	if _, err := db.CheckSchema(ctx); err != nil {
		return fmt.Errorf("user add: %v", cause(err))
	}
	u, err := postgres.NewUserService(db).CreateUser(ctx, *username, password, r)
	switch trading.ErrorCode(err) {
	case "":
	case trading.ECONFLICT:
		return fmt.Errorf("user add: username %q is taken", *username)
	case trading.EINVALID:
		msg := trading.ErrorMessage(err)
		for _, f := range trading.ErrorFields(err) {
			msg += fmt.Sprintf("; %s %s", f.Field, f.Message)
		}
		return fmt.Errorf("user add: %s", msg)
	default:
		return fmt.Errorf("user add: %v", cause(err))
	}
	logger.Info("user created", "username", u.Username, "role", r, "id", u.ID)
	fmt.Fprintf(stdout, "created user %s (%s) with id %s\n", u.Username, r, u.ID)
	return nil
}

// withoutLineEnding drops one line ending ("\n" or "\r\n") from the end of a password read
// from a line or a file, which nobody means as part of it.
func withoutLineEnding(s string) string {
	return strings.TrimSuffix(strings.TrimSuffix(s, "\n"), "\r")
}

// promptPassword asks for the password twice at a terminal, without echo: read as a line
// from a terminal it was shown on the screen as it was typed.
func promptPassword(fd int, username string, prompt io.Writer) (string, error) {
	read := func(label string) (string, error) {
		fmt.Fprintf(prompt, "%s: ", label)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(prompt)
		if err != nil {
			return "", fmt.Errorf("reading the password from the terminal: %v", err)
		}
		return string(b), nil
	}
	password, err := read("Password for " + username)
	if err != nil {
		return "", err
	}
	switch {
	case password == "":
		return "", errors.New("no password given")
	case len(password) > maxPasswordBytes:
		return "", fmt.Errorf("the password is %d bytes long; at most %d are allowed (bcrypt)", len(password), maxPasswordBytes)
	}
	again, err := read("Again")
	if err != nil {
		return "", err
	}
	if again != password {
		return "", errors.New("the two passwords differ")
	}
	return password, nil
}

// readPassword reads the first line of r, without its line ending. Anything but line
// endings that arrived with it is refused: a second line was dropped without a word, and the user may
// have meant it as part of the password.
func readPassword(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, maxPasswordLine+1), maxPasswordLine+1)
	line, err := br.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reading the password from standard input: %v", err)
	}
	if len(line) > maxPasswordLine {
		return "", fmt.Errorf("the password on standard input is longer than %d bytes", maxPasswordBytes)
	}
	password := withoutLineEnding(line)
	// Only what has arrived with the first line: reading on to the end blocked when standard
	// input stays open after it (kubectl exec -i without -t, where the user types the line).
	if rest, _ := br.Peek(br.Buffered()); strings.Trim(string(rest), "\r\n") != "" {
		return "", errors.New("standard input has more than one line: give the password alone, on the first line")
	}
	switch {
	case password == "":
		return "", errors.New("no password on standard input (give it as the first line)")
	case len(password) > maxPasswordBytes:
		return "", fmt.Errorf("the password is %d bytes long; at most %d are allowed (bcrypt)", len(password), maxPasswordBytes)
	}
	return password, nil
}
