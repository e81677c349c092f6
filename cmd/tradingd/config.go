package main

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/shopspring/decimal"

	trading "github.com/findmy/trading-operator/runtime"
	"github.com/findmy/trading-operator/runtime/jwt"
	"github.com/findmy/trading-operator/runtime/redis"
)

// Config is every setting of tradingd, validated. Settings that only a later component
// consumes (Redis, rate limits, caches, trusted proxies) are parsed and kept here already,
// so that a typo fails at start today instead of being ignored until that component lands.
//
// Config holds secrets (JWTKeys, BootstrapAdminPassword, the DSN's password): log it only
// through LogValue, which leaves them out.
type Config struct {
	DatabaseURL string
	RedisURL    string // "" when unset
	// RedisPassword, when set, replaces REDIS_URL's password: a password holding "/", "?",
	// "#", "%" or "@" would have to be percent-encoded inside a URL, and a Kubernetes
	// variable taken from a Secret cannot be. "" when unset.
	RedisPassword string
	// RedisKeyPrefix goes in front of every Redis key and the invalidation channel, so that
	// several stacks can share one Redis (and one database number) without sharing login
	// limits or invalidations. "" when unset.
	RedisKeyPrefix string
	// RedisCAFile is a PEM file of the CAs that sign a rediss:// server's certificate,
	// instead of the system's. "" when unset.
	RedisCAFile string
	// RedisRootCAs is RedisCAFile's certificates, read at start; nil without it.
	RedisRootCAs *x509.CertPool

	JWTKeys     string // the raw JWT_KEYS text, already checked by jwt.ParseKeys; "" when JWTKeysFile is used
	JWTKeysFile string // path of a file holding JWT_KEYS's text; read at start by KeySet
	JWTIssuer   string
	JWTAudience string

	AccessTokenTTL  time.Duration
	RefreshTokenTTL time.Duration

	ListenAddr string
	AdminAddr  string

	Symbols      []string
	MaxQuantity  decimal.Decimal
	MaxPrice     decimal.Decimal
	MaxDailyLoss *decimal.Decimal // nil: no daily loss limit

	// Requests per minute per class; 0 turns that class off.
	RateLimitLogin           int
	RateLimitTrading         int
	RateLimitData            int
	RateLimitGlobalPerMinute int
	RateLimitGlobalPerDay    int

	CachePositionsTTL time.Duration
	CacheSummaryTTL   time.Duration
	CacheL1           bool

	DBMaxConns          int32
	DBMinConns          int32
	DBMaxConnLifetime   time.Duration
	DBHealthCheckPeriod time.Duration

	TrustedProxies []netip.Prefix // nil: X-Forwarded-For is never believed

	ShutdownGrace time.Duration

	LogLevel  slog.Level
	LogFormat string // "json" or "text"

	BootstrapAdminPassword string // "" when unset
	DemoUsers              bool

	// MemoryLimitRatio is the share of the cgroup's memory limit that becomes Go's soft
	// memory limit (AUTOMEMLIMIT); 0: off.
	MemoryLimitRatio float64

	// TerminationLog is where `migrate` reports the schema version it left, and a failed
	// `serve` or `migrate` its error line, when that file exists: the kubelet mounts one into
	// every container and shows its text as the container's termination message, which the
	// operator reads (it knows the version of no image but its own) and repeats (why the
	// runtime's pods crash, why a migration failed), and which a failure's line would
	// otherwise reach only in the logs.
	TerminationLog string
}

// setting is one row of api.md's configuration table: a flag, its environment twin and
// its default ("" for required or unset settings). The flag name is the environment name
// in lower case with dashes, so that one can be guessed from the other.
type setting struct {
	env   string
	def   string
	usage string
	bool  bool // a flag that may be given without a value (--demo-users)
	// apply parses the resolved text into c; it is not called when the text is "" (unset).
	apply func(c *Config, v string) error
}

func (s setting) flagName() string {
	return strings.ReplaceAll(strings.ToLower(s.env), "_", "-")
}

// Defaults from api.md's table, named so that the tests compare against the same words.
const (
	defaultSymbols = "BTC/USD,ETH/USD,BNB/USD,XRP/USD,ADA/USD"
)

var symbolPattern = regexp.MustCompile(`^[A-Z]{2,10}/[A-Z]{2,10}$`)

// settings is the whole table. Order matters only for the help text and for which error
// is reported first.
var settings = []setting{
	{env: "DATABASE_URL", usage: "PostgreSQL DSN (required)", apply: func(c *Config, v string) error {
		if err := checkDSN(v); err != nil {
			return err
		}
		c.DatabaseURL = v
		return nil
	}},
	{env: "REDIS_URL", usage: "Redis URL (unset: in-process cache and rate limits)", apply: func(c *Config, v string) error {
		if err := checkRedisURL(v); err != nil {
			return err
		}
		c.RedisURL = v
		return nil
	}},
	{env: "REDIS_PASSWORD", usage: "Redis password, instead of the one in REDIS_URL (any characters, no URL encoding)", apply: func(c *Config, v string) error {
		c.RedisPassword = v
		return nil
	}},
	{env: "REDIS_CA_FILE", usage: "PEM file of the CAs that sign the Redis server's certificate (rediss:// only; unset: the system's CAs)", apply: func(c *Config, v string) error {
		c.RedisCAFile = v
		return nil
	}},
	{env: "REDIS_KEY_PREFIX", usage: "put in front of every Redis key and channel, for several deployments sharing one Redis", apply: func(c *Config, v string) error {
		if len(v) > 128 || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '*' || r == '?' || r == '[' || r == '\\' }) {
			// Glob characters would make the cache's SCAN of its own keys match others'.
			return errors.New("must be at most 128 characters without spaces, control characters or * ? [ \\")
		}
		c.RedisKeyPrefix = v
		return nil
	}},
	{env: "JWT_KEYS", usage: "kid:base64secret pairs, comma or newline separated; the first signs", apply: func(c *Config, v string) error {
		if _, err := jwt.ParseKeys(v); err != nil {
			return err
		}
		c.JWTKeys = v
		return nil
	}},
	{env: "JWT_KEYS_FILE", usage: "file holding JWT_KEYS's text (instead of JWT_KEYS)", apply: func(c *Config, v string) error {
		c.JWTKeysFile = v
		return nil
	}},
	{env: "JWT_ISSUER", def: "tradingd", usage: "iss of issued tokens, checked on every token", apply: func(c *Config, v string) error {
		c.JWTIssuer = v
		return nil
	}},
	{env: "JWT_AUDIENCE", def: "trading-api", usage: "aud of issued tokens, checked on every token", apply: func(c *Config, v string) error {
		c.JWTAudience = v
		return nil
	}},
	{env: "ACCESS_TOKEN_TTL", def: "60m", usage: "access token lifetime (at least 1s)", apply: atLeastSecond(func(c *Config) *time.Duration { return &c.AccessTokenTTL })},
	{env: "REFRESH_TOKEN_TTL", def: "720h", usage: "refresh token lifetime (at least 1s)", apply: atLeastSecond(func(c *Config) *time.Duration { return &c.RefreshTokenTTL })},
	{env: "LISTEN_ADDR", def: ":8080", usage: "API address", apply: address(func(c *Config) *string { return &c.ListenAddr })},
	{env: "ADMIN_ADDR", def: ":9090", usage: "admin address (/healthz, /readyz, /metrics)", apply: address(func(c *Config) *string { return &c.AdminAddr })},
	{env: "SYMBOLS", def: defaultSymbols, usage: "traded symbols, comma separated", apply: func(c *Config, v string) error {
		var syms []string
		for s := range strings.SplitSeq(v, ",") {
			s = strings.TrimSpace(s)
			if !symbolPattern.MatchString(s) {
				return fmt.Errorf("%q does not look like BTC/USD (^[A-Z]{2,10}/[A-Z]{2,10}$)", s)
			}
			if !slices.Contains(syms, s) {
				syms = append(syms, s)
			}
		}
		c.Symbols = syms
		return nil
	}},
	{env: "MAX_QUANTITY", def: "1000000", usage: "largest order quantity", apply: storableBound(func(c *Config, d decimal.Decimal) { c.MaxQuantity = d })},
	{env: "MAX_PRICE", def: "1000000", usage: "largest order price", apply: storableBound(func(c *Config, d decimal.Decimal) { c.MaxPrice = d })},
	{env: "MAX_DAILY_LOSS", usage: "daily realized loss at which a user's new orders are refused (unset: no limit)", apply: positiveDecimal(func(c *Config, d decimal.Decimal) { c.MaxDailyLoss = &d })},
	{env: "RATE_LIMIT_LOGIN", def: "5", usage: "logins per minute per client IP (0: off)", apply: rateLimit(func(c *Config) *int { return &c.RateLimitLogin })},
	{env: "RATE_LIMIT_TRADING", def: "30", usage: "trading requests per minute per user (0: off)", apply: rateLimit(func(c *Config) *int { return &c.RateLimitTrading })},
	{env: "RATE_LIMIT_DATA", def: "60", usage: "data requests per minute per user (0: off)", apply: rateLimit(func(c *Config) *int { return &c.RateLimitData })},
	{env: "RATE_LIMIT_GLOBAL_PER_MINUTE", def: "100", usage: "requests per minute over all classes (0: off)", apply: rateLimit(func(c *Config) *int { return &c.RateLimitGlobalPerMinute })},
	{env: "RATE_LIMIT_GLOBAL_PER_DAY", def: "1000", usage: "requests per day over all classes (0: off)", apply: rateLimit(func(c *Config) *int { return &c.RateLimitGlobalPerDay })},
	{env: "CACHE_POSITIONS_TTL", def: "30s", usage: "positions cache lifetime (at most 24h; 0 means the default)", apply: cacheTTL(func(c *Config) *time.Duration { return &c.CachePositionsTTL })},
	{env: "CACHE_SUMMARY_TTL", def: "10s", usage: "summary cache lifetime (at most 24h; 0 means the default)", apply: cacheTTL(func(c *Config) *time.Duration { return &c.CacheSummaryTTL })},
	{env: "CACHE_L1", def: "true", bool: true, usage: "keep positions and summaries in process memory; false for several replicas without REDIS_URL, which cannot tell each other of a trade", apply: boolean(func(c *Config) *bool { return &c.CacheL1 })},
	{env: "AUTOMEMLIMIT", def: "0.9", usage: "share of the container's (cgroup's) memory limit used as Go's soft memory limit, from 0 to 1, or off (GOMEMLIMIT wins)", apply: func(c *Config, v string) error {
		if v == "off" {
			c.MemoryLimitRatio = 0
			return nil
		}
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || !(r > 0 && r <= 1) {
			return fmt.Errorf("%q is neither a number above 0 and at most 1 nor off", v)
		}
		c.MemoryLimitRatio = r
		return nil
	}},
	{env: "DB_MAX_CONNS", def: "30", usage: "largest number of pooled database connections", apply: poolSize(1, func(c *Config) *int32 { return &c.DBMaxConns })},
	{env: "DB_MIN_CONNS", def: "2", usage: "database connections kept open", apply: poolSize(0, func(c *Config) *int32 { return &c.DBMinConns })},
	{env: "DB_MAX_CONN_LIFETIME", def: "1h", usage: "age at which a pooled connection is replaced", apply: positiveDuration(func(c *Config) *time.Duration { return &c.DBMaxConnLifetime })},
	{env: "DB_HEALTH_CHECK_PERIOD", def: "30s", usage: "how often idle pooled connections are checked", apply: positiveDuration(func(c *Config) *time.Duration { return &c.DBHealthCheckPeriod })},
	{env: "TRUSTED_PROXIES", usage: "CIDRs whose X-Forwarded-For is believed, comma separated", apply: func(c *Config, v string) error {
		var ps []netip.Prefix
		for s := range strings.SplitSeq(v, ",") {
			s = strings.TrimSpace(s)
			p, err := netip.ParsePrefix(s)
			if err != nil {
				// A bare address is the one-host network: what someone listing a proxy means.
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					return fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8", s)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			ps = append(ps, p.Masked())
		}
		c.TrustedProxies = ps
		return nil
	}},
	{env: "SHUTDOWN_GRACE", def: "20s", usage: "how long in-flight requests may take to finish on SIGTERM", apply: nonNegativeDuration(func(c *Config) *time.Duration { return &c.ShutdownGrace })},
	{env: "LOG_LEVEL", def: "info", usage: "debug, info, warn or error", apply: func(c *Config, v string) error {
		switch strings.ToLower(v) {
		case "debug":
			c.LogLevel = slog.LevelDebug
		case "info":
			c.LogLevel = slog.LevelInfo
		case "warn":
			c.LogLevel = slog.LevelWarn
		case "error":
			c.LogLevel = slog.LevelError
		default:
			return fmt.Errorf("%q is not one of debug, info, warn, error", v)
		}
		return nil
	}},
	{env: "LOG_FORMAT", def: "json", usage: "json or text", apply: func(c *Config, v string) error {
		switch v = strings.ToLower(v); v {
		case "json", "text":
			c.LogFormat = v
			return nil
		}
		return fmt.Errorf("%q is not one of json, text", v)
	}},
	{env: "BOOTSTRAP_ADMIN_PASSWORD", usage: "creates user admin (role admin) on first start when absent", apply: func(c *Config, v string) error {
		// One line ending at the end is not part of it, as for `user add`: a Secret made from
		// a file (kubectl create secret --from-file) usually ends in one, and the admin's
		// password then held a line break nobody types.
		v = withoutLineEnding(v)
		if len(v) > maxPasswordBytes {
			return fmt.Errorf("is %d bytes long; bcrypt takes at most %d", len(v), maxPasswordBytes)
		}
		// A login carries the password in JSON, which holds only text: admin could never log
		// in with it. Said here, before the database is touched, not as the store's bare
		// "the request has invalid fields".
		if !utf8.ValidString(v) {
			return errors.New("is not UTF-8 text, which a login's JSON could never carry")
		}
		c.BootstrapAdminPassword = v
		return nil
	}},
	{env: "TERMINATION_LOG", def: "/dev/termination-log", usage: "file that receives, when it exists, the error line of a failed serve or migrate and the schema version of a successful migrate (Kubernetes' termination message)", apply: func(c *Config, v string) error {
		c.TerminationLog = v
		return nil
	}},
	{env: "DEMO_USERS", def: "false", bool: true, usage: "create trader1, trader2 and risk1 with well-known passwords (never in production)", apply: boolean(func(c *Config) *bool { return &c.DemoUsers })},
}

// maxPasswordBytes is bcrypt's limit: longer passwords are refused rather than truncated.
const maxPasswordBytes = 72

// Which settings each subcommand reads. `migrate` and `user add` need only the database
// (api.md: "needs only DATABASE_URL"), so a serve-only setting that is wrong or missing
// never stops them.
var (
	serveSettings   = settingNames(settings)
	dbSettings      = []string{"DATABASE_URL", "LOG_LEVEL", "LOG_FORMAT"}
	migrateSettings = append(slices.Clone(dbSettings), "TERMINATION_LOG")
)

// settingNames is every setting's name but those left out.
func settingNames(ss []setting, except ...string) []string {
	names := make([]string, 0, len(ss))
	for _, s := range ss {
		if !slices.Contains(except, s.env) {
			names = append(names, s.env)
		}
	}
	return names
}

// Load reads serve's configuration from command-line args (without the subcommand) and
// the environment through getenv. A flag beats its environment twin, which beats the
// default; an empty value counts as unset. Pure: no file or network is touched, so it is
// tested as a table (JWT_KEYS_FILE is read later, by KeySet).
//
// Errors are one line and start with the setting's environment name.
func Load(args []string, getenv func(string) string) (*Config, error) {
	fs := newFlagSet("serve")
	c, err := load(fs, serveSettings, args, getenv)
	if err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, usageErrorf("serve: unexpected argument %q", fs.Arg(0))
	}
	return c, nil
}

// configError is a missing or malformed setting: exit code 2.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func settingError(env string, err error) error {
	msg := err.Error()
	// Some validators (jwt.ParseKeys) already name the setting.
	if !strings.HasPrefix(msg, env+":") {
		msg = env + ": " + msg
	}
	return &configError{msg: oneLine(msg)}
}

// usageError is a bad command line: exit code 2, with the usage.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("tradingd "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by run, on one line
	return fs
}

// flagValue records whether a flag was given and its text.
type flagValue struct {
	text   string
	given  bool
	isBool bool
}

func (v *flagValue) String() string   { return v.text }
func (v *flagValue) IsBoolFlag() bool { return v.isBool }
func (v *flagValue) Set(s string) error {
	v.text, v.given = s, true
	return nil
}

// load registers the named settings on fs, parses args and resolves every setting:
// flag, then environment, then default.
func load(fs *flag.FlagSet, names []string, args []string, getenv func(string) string) (*Config, error) {
	values, used := register(fs, names)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, &helpRequested{fs: fs}
		}
		// A setting's flag given without its value is a missing setting: one line naming it,
		// like its environment twin left empty.
		if name, ok := strings.CutPrefix(err.Error(), "flag needs an argument: -"); ok {
			for _, s := range used {
				if s.flagName() == name {
					return nil, settingError(s.env, fmt.Errorf("--%s is given without a value", name))
				}
			}
		}
		return nil, usageErrorf("%s: %v", fs.Name(), err)
	}

	c := &Config{}
	source := map[string]string{}
	for _, s := range used {
		text, src := resolve(s, values[s.env], getenv)
		if text == "" {
			continue
		}
		source[s.env] = src
		if err := s.apply(c, text); err != nil {
			return nil, settingError(s.env, err)
		}
	}

	// Rules that span settings.
	if slices.Contains(names, "DATABASE_URL") && c.DatabaseURL == "" {
		return nil, settingError("DATABASE_URL", errors.New("required (set DATABASE_URL or --database-url)"))
	}
	if slices.Contains(names, "JWT_KEYS") {
		switch {
		case c.JWTKeys == "" && c.JWTKeysFile == "":
			return nil, settingError("JWT_KEYS", errors.New("required (set JWT_KEYS or JWT_KEYS_FILE, or --jwt-keys or --jwt-keys-file)"))
		case c.JWTKeys != "" && c.JWTKeysFile != "":
			// A flag beats the environment, also across the pair; two of the same kind is ambiguous.
			switch {
			case source["JWT_KEYS"] == "flag" && source["JWT_KEYS_FILE"] != "flag":
				c.JWTKeysFile = ""
			case source["JWT_KEYS_FILE"] == "flag" && source["JWT_KEYS"] != "flag":
				c.JWTKeys = ""
			default:
				return nil, settingError("JWT_KEYS", errors.New("set JWT_KEYS or JWT_KEYS_FILE, not both"))
			}
		}
	}
	if c.RedisCAFile != "" {
		// Read now, so that a missing or wrong file stops the start before any connection.
		pool, err := readCAFile(c.RedisCAFile, c.RedisURL)
		if err != nil {
			return nil, settingError("REDIS_CA_FILE", err)
		}
		c.RedisRootCAs = pool
	}
	if slices.Contains(names, "DB_MIN_CONNS") && c.DBMinConns > c.DBMaxConns {
		return nil, settingError("DB_MIN_CONNS", fmt.Errorf("%d is more than DB_MAX_CONNS (%d)", c.DBMinConns, c.DBMaxConns))
	}
	// Port 0 picks a free port for each, so only a fixed port can collide.
	if slices.Contains(names, "LISTEN_ADDR") && c.ListenAddr == c.AdminAddr && !strings.HasSuffix(c.AdminAddr, ":0") {
		return nil, settingError("ADMIN_ADDR", fmt.Errorf("%q is also LISTEN_ADDR", c.AdminAddr))
	}
	// The P&L of one trade is at most MAX_QUANTITY x MAX_PRICE, and NUMERIC(30,8) holds it
	// below 1e22: with larger bounds a position could be opened and never closed (its
	// closing trade's P&L refused). (A position's running total of realized P&L has the same
	// column type: it could still overflow after about 1e22 / (MAX_QUANTITY x MAX_PRICE)
	// round trips at the limits.)
	if slices.Contains(names, "MAX_PRICE") && !c.MaxQuantity.Mul(c.MaxPrice).LessThan(maxTradeValue) {
		return nil, settingError("MAX_PRICE", fmt.Errorf("%s x MAX_QUANTITY %s must be less than %s, the largest P&L the database stores",
			c.MaxPrice, c.MaxQuantity, maxTradeValue))
	}
	return c, nil
}

// register adds a flag to fs for each named setting, and returns their values and settings.
func register(fs *flag.FlagSet, names []string) (map[string]*flagValue, []setting) {
	values := make(map[string]*flagValue, len(names))
	var used []setting
	for _, s := range settings {
		if !slices.Contains(names, s.env) {
			continue
		}
		v := &flagValue{isBool: s.bool}
		values[s.env] = v
		used = append(used, s)
		usage := s.usage + " (env " + s.env
		if s.def != "" {
			usage += ", default " + s.def
		}
		fs.Var(v, s.flagName(), usage+")")
	}
	return values, used
}

// resolve is s's text, "" when unset, and where it came from: the flag, else the
// environment, else the default.
func resolve(s setting, v *flagValue, getenv func(string) string) (text, source string) {
	text, source = v.text, "flag"
	if !v.given {
		text, source = getenv(s.env), "env"
	}
	if text == "" {
		text, source = s.def, "default"
	}
	return text, source
}

// terminationLog resolves TERMINATION_LOG alone, for a command whose settings are names
// (none: ""): its failure goes there, and the failure may be any other setting's error,
// which stops load before it returns a Config. A command line the flag package stops on
// (an unknown flag) before --termination-log leaves the path to the environment or the
// default.
func terminationLog(names []string, args []string, getenv func(string) string) string {
	if !slices.Contains(names, "TERMINATION_LOG") {
		return ""
	}
	fs := newFlagSet("")
	values, used := register(fs, names)
	_ = fs.Parse(args) // its error is load's to report
	for _, s := range used {
		if s.env == "TERMINATION_LOG" {
			text, _ := resolve(s, values[s.env], getenv)
			return text
		}
	}
	return ""
}

// maxTradeValue bounds MAX_QUANTITY x MAX_PRICE (exclusive): a trade's realized P&L, stored in
// NUMERIC(30,8).
var maxTradeValue = decimal.New(1, 22)

// KeySet returns the JWT keys from JWT_KEYS or from the file JWT_KEYS_FILE names, read
// with readFile. Errors name the setting and never contain key material.
func (c *Config) KeySet(readFile func(string) ([]byte, error)) (*jwt.KeySet, error) {
	if c.JWTKeys != "" {
		ks, err := jwt.ParseKeys(c.JWTKeys)
		if err != nil {
			return nil, settingError("JWT_KEYS", err)
		}
		return ks, nil
	}
	b, err := readFile(c.JWTKeysFile)
	if err != nil {
		// os.ReadFile's error names the path and the reason, never the content.
		return nil, settingError("JWT_KEYS_FILE", err)
	}
	ks, err := jwt.ParseKeys(string(b))
	if err != nil {
		// ParseKeys names JWT_KEYS; here the text came from the file.
		msg := strings.TrimPrefix(err.Error(), "JWT_KEYS: ")
		return nil, settingError("JWT_KEYS_FILE", fmt.Errorf("%s: %s", c.JWTKeysFile, msg))
	}
	return ks, nil
}

// Rules are the order validation limits.
func (c *Config) Rules() trading.OrderRules {
	return trading.OrderRules{Symbols: c.Symbols, MaxQuantity: c.MaxQuantity, MaxPrice: c.MaxPrice}
}

// LogValue is what the start-up log shows of the configuration: no secret, and the
// database URL without its password.
func (c *Config) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("database", redactDSN(c.DatabaseURL)),
		slog.Bool("redis", c.RedisURL != ""),
		slog.String("listen_addr", c.ListenAddr),
		slog.String("admin_addr", c.AdminAddr),
		slog.String("jwt_issuer", c.JWTIssuer),
		slog.String("jwt_audience", c.JWTAudience),
		slog.Duration("access_token_ttl", c.AccessTokenTTL),
		slog.Duration("refresh_token_ttl", c.RefreshTokenTTL),
		slog.Any("symbols", c.Symbols),
		slog.String("max_quantity", c.MaxQuantity.String()),
		slog.String("max_price", c.MaxPrice.String()),
		slog.Int("db_max_conns", int(c.DBMaxConns)),
		slog.Int("db_min_conns", int(c.DBMinConns)),
		slog.Duration("shutdown_grace", c.ShutdownGrace),
		slog.Bool("demo_users", c.DemoUsers),
		slog.Bool("bootstrap_admin", c.BootstrapAdminPassword != ""),
	}
	if c.MaxDailyLoss != nil {
		attrs = append(attrs, slog.String("max_daily_loss", c.MaxDailyLoss.String()))
	}
	return slog.GroupValue(attrs...)
}

func positiveDuration(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s, 5m or 1h", v)
		}
		if d <= 0 {
			return fmt.Errorf("%q must be more than 0", v)
		}
		*field(c) = d
		return nil
	}
}

// atLeastSecond is positiveDuration for token lifetimes: tokens carry whole seconds (exp,
// expires_in), so a lifetime under a second made tokens that had expired when issued.
func atLeastSecond(field func(*Config) *time.Duration) func(*Config, string) error {
	positive := positiveDuration(field)
	return func(c *Config, v string) error {
		if err := positive(c, v); err != nil {
			return err
		}
		if *field(c) < time.Second {
			return fmt.Errorf("%q must be at least 1s", v)
		}
		return nil
	}
}

func nonNegativeDuration(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s, 5m or 1h", v)
		}
		if d < 0 {
			return fmt.Errorf("%q must not be negative", v)
		}
		*field(c) = d
		return nil
	}
}

// maxCacheTTL bounds the cache lifetimes: the versions that keep Redis values fresh
// (runtime/redis) live a week, and a value must expire long before its version counter.
const maxCacheTTL = 24 * time.Hour

func cacheTTL(field func(*Config) *time.Duration) func(*Config, string) error {
	parse := nonNegativeDuration(field)
	return func(c *Config, v string) error {
		if err := parse(c, v); err != nil {
			return err
		}
		if *field(c) > maxCacheTTL {
			return fmt.Errorf("%q is longer than %s", v, maxCacheTTL)
		}
		return nil
	}
}

func boolean(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*field(c) = b
		return nil
	}
}

// rateLimit reads a RATE_LIMIT_* setting: requests per period, 0 off. The upper bound is the
// TradingStack's (an int32): far larger numbers (a "1<<62" meant as unlimited, where 0 is)
// overflow the limiter's arithmetic and the headers said 0 remaining on allowed requests.
func rateLimit(field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > math.MaxInt32 {
			return fmt.Errorf("%q is not a whole number from 0 (off) to %d", v, math.MaxInt32)
		}
		*field(c) = n
		return nil
	}
}

func poolSize(min int64, field func(*Config) *int32) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n < min || n > math.MaxInt32 {
			return fmt.Errorf("%q is not a whole number of %d or more", v, min)
		}
		*field(c) = int32(n)
		return nil
	}
}

func positiveDecimal(set func(*Config, decimal.Decimal), checks ...func(decimal.Decimal) error) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := trading.ParseDecimal(v)
		if err != nil {
			return fmt.Errorf("%q: %s", v, trading.ErrorMessage(err))
		}
		if !d.IsPositive() {
			return fmt.Errorf("%q must be more than 0", v)
		}
		for _, check := range checks {
			if err := check(d); err != nil {
				return err
			}
		}
		set(c, d)
		return nil
	}
}

// storableBound is positiveDecimal below trading.MaxAmount: a larger bound would let
// validation accept orders the database cannot store (a 422 naming no field).
func storableBound(set func(*Config, decimal.Decimal)) func(*Config, string) error {
	return positiveDecimal(set, func(d decimal.Decimal) error {
		if d.GreaterThanOrEqual(trading.MaxAmount) {
			return fmt.Errorf("%s must be less than %s, the largest amount the database stores", d, trading.MaxAmount)
		}
		return nil
	})
}

// address accepts host:port with a numeric port (0 picks a free one); the host may be
// empty (every interface).
func address(field func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error {
		_, port, err := net.SplitHostPort(v)
		if err != nil {
			return fmt.Errorf("%q is not host:port such as :8080 or 127.0.0.1:8080", v)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("%q: the port must be a number from 0 to 65535", v)
		}
		*field(c) = v
		return nil
	}
}

// checkDSN accepts a postgres:// URL or a keyword/value string (host=... dbname=...).
// pgx parses it for real when the pool opens; this catches the obvious mistakes without
// touching the network or a password file. Errors never quote the DSN (it may hold a password).
func checkDSN(v string) error {
	if strings.Contains(v, "://") {
		u, err := url.Parse(v)
		if err != nil {
			return errors.New("is not a valid URL")
		}
		if u.Scheme != "postgres" && u.Scheme != "postgresql" {
			return fmt.Errorf("scheme %q is not postgres:// or postgresql://", u.Scheme)
		}
		rest, _, _ := strings.Cut(v[len(u.Scheme)+len("://"):], "?")
		rest, _, _ = strings.Cut(rest, "#")
		if _, path, ok := strings.Cut(rest, "/"); ok && strings.Contains(path, "@") {
			// A password holding "/" (p@ss/w0rd, not percent-encoded): the URL's host became
			// what follows its first "@", the rest went into the database name, the start
			// waited two minutes for a host that does not exist, and the logs showed part of
			// the password.
			return errors.New(`has an "@" after its host: percent-encode "/", "@", "?" and "#" in the password (%2F, %40, %3F, %23), and "@" in the database name`)
		}
		return nil
	}
	if !strings.Contains(v, "=") {
		return errors.New("is neither a postgres:// URL nor a keyword=value connection string")
	}
	return nil
}

// parseDSN is the full check of DATABASE_URL, by the driver itself, pool settings
// (pool_max_conns and the like) included. It is not part of Load because pgx may read a
// password file; the commands call it before connecting.
func parseDSN(dsn string) error {
	if _, err := pgxpool.ParseConfig(dsn); err != nil {
		// pgx's message may quote the DSN; say only what is wrong with it.
		msg := "is not a valid PostgreSQL connection string"
		var pce *pgconn.ParseConfigError
		if full := err.Error(); errors.As(err, &pce) && strings.Contains(full, "`: ") {
			// "cannot parse `<DSN>`: what (why)": what names the parameter.
			msg += ": " + redactDSN(full[strings.LastIndex(full, "`: ")+3:])
		} else if cause := errors.Unwrap(err); cause != nil {
			msg += ": " + redactDSN(cause.Error())
		}
		return settingError("DATABASE_URL", errors.New(msg))
	}
	return nil
}

// checkRedisURL accepts what go-redis's ParseURL takes: redis:// or rediss:// with a
// host and an optional database number, or unix:// with a socket path.
func checkRedisURL(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return errors.New("is not a valid URL")
	}
	switch u.Scheme {
	case "redis", "rediss":
		if u.Host == "" || u.Hostname() == "" {
			return errors.New("has no host (redis://host:6379/0)")
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return errors.New("has a port that is not a number from 1 to 65535")
			}
		}
		if strings.Contains(u.Path, "@") {
			// A password holding "/" not percent-encoded: the rest of it is in the path, and
			// the database check below would have echoed it.
			return errors.New(`has an "@" after its host: percent-encode "/", "@", "?" and "#" in the password (%2F, %40, %3F, %23), or give it in REDIS_PASSWORD`)
		}
		if db := strings.TrimPrefix(u.Path, "/"); db != "" {
			if n, err := strconv.Atoi(db); err != nil || n < 0 {
				return fmt.Errorf("database %q is not a number (redis://host:6379/0)", db)
			}
		}
	case "unix":
		if u.Path == "" {
			return errors.New("has no socket path (unix:///path/to/redis.sock)")
		}
	default:
		return fmt.Errorf("scheme %q is not redis://, rediss:// or unix://", u.Scheme)
	}
	// The client's own parser: an option it does not take (?bogus=1, ?password=) or cannot
	// read (?dial_timeout=abc) failed only later, after the start had been logged.
	if err := redis.CheckURL(v); err != nil {
		return err
	}
	return nil
}

var dsnPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// redactDSN hides the passwords of a DSN for logs: the user's, and any other parameter
// named like one (sslpassword, the client key's passphrase).
func redactDSN(dsn string) string {
	if strings.Contains(dsn, "://") {
		if u, err := url.Parse(dsn); err == nil {
			q := u.Query()
			changed := false
			for k := range q {
				if strings.Contains(strings.ToLower(k), "password") {
					q.Set(k, "xxxxx")
					changed = true
				}
			}
			if changed {
				u.RawQuery = q.Encode()
			}
			return u.Redacted()
		}
		return "(unparsable URL)"
	}
	return dsnPassword.ReplaceAllString(dsn, "${1}xxxxx")
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// readCAFile reads REDIS_CA_FILE: PEM certificates, for a rediss:// REDIS_URL.
func readCAFile(path, redisURL string) (*x509.CertPool, error) {
	if u, err := url.Parse(redisURL); err != nil || u.Scheme != "rediss" { // url.Parse lowercases the scheme
		return nil, errors.New("needs a rediss:// REDIS_URL (TLS)")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err // names the path and the reason
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
