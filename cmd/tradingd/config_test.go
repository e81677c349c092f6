package main

import (
	"encoding/base64"
	"errors"
	"io/fs"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// testKeys is a valid JWT_KEYS value: 32 bytes of secret.
var testKeys = "k1:" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// required is the least environment serve starts with.
func required() map[string]string {
	return map[string]string{
		"DATABASE_URL": "postgres://trader@db.example:5432/trading?sslmode=disable",
		"JWT_KEYS":     testKeys,
	}
}

func with(m map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func dec(s string) decimal.Decimal { return decimal.RequireFromString(s) }

// TestLoadDefaults holds the defaults to api.md's table, written out here from the table
// rather than from the code.
func TestLoadDefaults(t *testing.T) {
	got, err := Load(nil, envOf(required()))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := &Config{
		DatabaseURL:              "postgres://trader@db.example:5432/trading?sslmode=disable",
		RedisURL:                 "",
		JWTKeys:                  testKeys,
		JWTIssuer:                "tradingd",
		JWTAudience:              "trading-api",
		AccessTokenTTL:           60 * time.Minute,
		RefreshTokenTTL:          720 * time.Hour,
		ListenAddr:               ":8080",
		AdminAddr:                ":9090",
		Symbols:                  []string{"BTC/USD", "ETH/USD", "BNB/USD", "XRP/USD", "ADA/USD"},
		MaxQuantity:              dec("1000000"),
		MaxPrice:                 dec("1000000"),
		MaxDailyLoss:             nil,
		RateLimitLogin:           5,
		RateLimitTrading:         30,
		RateLimitData:            60,
		RateLimitGlobalPerMinute: 100,
		RateLimitGlobalPerDay:    1000,
		CachePositionsTTL:        30 * time.Second,
		CacheSummaryTTL:          10 * time.Second,
		CacheL1:                  true,
		DBMaxConns:               30,
		DBMinConns:               2,
		DBMaxConnLifetime:        time.Hour,
		DBHealthCheckPeriod:      30 * time.Second,
		TrustedProxies:           nil,
		ShutdownGrace:            20 * time.Second,
		LogLevel:                 slog.LevelInfo,
		LogFormat:                "json",
		BootstrapAdminPassword:   "",
		DemoUsers:                false,
		MemoryLimitRatio:         0.9,                    // beyond api.md's table: automemlimit's default
		TerminationLog:           "/dev/termination-log", // beyond api.md's table: where the kubelet mounts it
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults differ from api.md's table:\n got %+v\nwant %+v", got, want)
	}
}

// TestLoadSources: every setting is read from its environment variable and from its flag,
// and the flag wins when both are given.
func TestLoadSources(t *testing.T) {
	daily := dec("2500.5")
	tests := []struct {
		env   string
		flag  string
		value string // given through the environment and the flag
		other string // a different valid value: in the environment when the flag holds value
		check func(c *Config) bool
	}{
		{"DATABASE_URL", "--database-url", "postgres://a@h/db1", "postgres://a@h/db2", func(c *Config) bool { return c.DatabaseURL == "postgres://a@h/db1" }},
		{"REDIS_URL", "--redis-url", "redis://cache:6379/1", "redis://other:6379/0", func(c *Config) bool { return c.RedisURL == "redis://cache:6379/1" }},
		{"JWT_ISSUER", "--jwt-issuer", "iss-x", "iss-y", func(c *Config) bool { return c.JWTIssuer == "iss-x" }},
		{"JWT_AUDIENCE", "--jwt-audience", "aud-x", "aud-y", func(c *Config) bool { return c.JWTAudience == "aud-x" }},
		{"ACCESS_TOKEN_TTL", "--access-token-ttl", "15m", "2h", func(c *Config) bool { return c.AccessTokenTTL == 15*time.Minute }},
		{"REFRESH_TOKEN_TTL", "--refresh-token-ttl", "24h", "48h", func(c *Config) bool { return c.RefreshTokenTTL == 24*time.Hour }},
		{"LISTEN_ADDR", "--listen-addr", "127.0.0.1:18080", ":7000", func(c *Config) bool { return c.ListenAddr == "127.0.0.1:18080" }},
		{"ADMIN_ADDR", "--admin-addr", "127.0.0.1:19090", ":7001", func(c *Config) bool { return c.AdminAddr == "127.0.0.1:19090" }},
		{"SYMBOLS", "--symbols", "BTC/USD, SOL/USDT", "ETH/USD", func(c *Config) bool {
			return reflect.DeepEqual(c.Symbols, []string{"BTC/USD", "SOL/USDT"})
		}},
		{"MAX_QUANTITY", "--max-quantity", "500.5", "7", func(c *Config) bool { return c.MaxQuantity.Equal(dec("500.5")) }},
		{"MAX_PRICE", "--max-price", "0.00000001", "7", func(c *Config) bool { return c.MaxPrice.Equal(dec("0.00000001")) }},
		{"MAX_DAILY_LOSS", "--max-daily-loss", "2500.5", "7", func(c *Config) bool { return c.MaxDailyLoss != nil && c.MaxDailyLoss.Equal(daily) }},
		{"RATE_LIMIT_LOGIN", "--rate-limit-login", "0", "9", func(c *Config) bool { return c.RateLimitLogin == 0 }},
		{"RATE_LIMIT_TRADING", "--rate-limit-trading", "11", "9", func(c *Config) bool { return c.RateLimitTrading == 11 }},
		{"RATE_LIMIT_DATA", "--rate-limit-data", "12", "9", func(c *Config) bool { return c.RateLimitData == 12 }},
		{"RATE_LIMIT_GLOBAL_PER_MINUTE", "--rate-limit-global-per-minute", "13", "9", func(c *Config) bool { return c.RateLimitGlobalPerMinute == 13 }},
		{"RATE_LIMIT_GLOBAL_PER_DAY", "--rate-limit-global-per-day", "2147483647", "9", func(c *Config) bool { return c.RateLimitGlobalPerDay == 2147483647 }}, // the largest accepted
		{"CACHE_POSITIONS_TTL", "--cache-positions-ttl", "1m", "2m", func(c *Config) bool { return c.CachePositionsTTL == time.Minute }},
		{"CACHE_SUMMARY_TTL", "--cache-summary-ttl", "0s", "2m", func(c *Config) bool { return c.CacheSummaryTTL == 0 }},
		{"CACHE_L1", "--cache-l1", "false", "true", func(c *Config) bool { return !c.CacheL1 }},
		{"DB_MAX_CONNS", "--db-max-conns", "8", "9", func(c *Config) bool { return c.DBMaxConns == 8 }},
		{"DB_MIN_CONNS", "--db-min-conns", "0", "1", func(c *Config) bool { return c.DBMinConns == 0 }},
		{"DB_MAX_CONN_LIFETIME", "--db-max-conn-lifetime", "10m", "20m", func(c *Config) bool { return c.DBMaxConnLifetime == 10*time.Minute }},
		{"DB_HEALTH_CHECK_PERIOD", "--db-health-check-period", "5s", "6s", func(c *Config) bool { return c.DBHealthCheckPeriod == 5*time.Second }},
		{"TRUSTED_PROXIES", "--trusted-proxies", "10.0.0.0/8, 192.168.1.7,fd00::/8", "172.16.0.0/12", func(c *Config) bool {
			want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.7/32"), netip.MustParsePrefix("fd00::/8")}
			return reflect.DeepEqual(c.TrustedProxies, want)
		}},
		{"SHUTDOWN_GRACE", "--shutdown-grace", "3s", "4s", func(c *Config) bool { return c.ShutdownGrace == 3*time.Second }},
		{"LOG_LEVEL", "--log-level", "debug", "error", func(c *Config) bool { return c.LogLevel == slog.LevelDebug }},
		{"LOG_FORMAT", "--log-format", "text", "json", func(c *Config) bool { return c.LogFormat == "text" }},
		{"BOOTSTRAP_ADMIN_PASSWORD", "--bootstrap-admin-password", "s3cret-admin", "other", func(c *Config) bool { return c.BootstrapAdminPassword == "s3cret-admin" }},
		// One line ending at the end (a Secret made from a file) is not part of it.
		{"BOOTSTRAP_ADMIN_PASSWORD", "--bootstrap-admin-password", "s3cret-admin\r\n", "other", func(c *Config) bool { return c.BootstrapAdminPassword == "s3cret-admin" }},
		{"DEMO_USERS", "--demo-users", "true", "false", func(c *Config) bool { return c.DemoUsers }},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			sources := map[string]struct {
				args []string
				env  map[string]string
			}{
				"env":             {nil, with(required(), tt.env, tt.value)},
				"flag":            {[]string{tt.flag + "=" + tt.value}, required()},
				"flag beats env":  {[]string{tt.flag + "=" + tt.value}, with(required(), tt.env, tt.other)},
				"flag, separated": {[]string{tt.flag, tt.value}, with(required(), tt.env, tt.other)},
			}
			if tt.env == "DEMO_USERS" || tt.env == "CACHE_L1" {
				delete(sources, "flag, separated") // a boolean flag takes --demo-users=false, not a separate word
			}
			for name, s := range sources {
				c, err := Load(s.args, envOf(s.env))
				if err != nil {
					t.Fatalf("%s: Load: %v", name, err)
				}
				if !tt.check(c) {
					t.Errorf("%s: %s=%q not taken: %+v", name, tt.env, tt.value, c)
				}
			}
		})
	}
}

func TestLoadBooleanFlagWithoutValue(t *testing.T) {
	c, err := Load([]string{"--demo-users"}, envOf(with(required(), "DEMO_USERS", "false")))
	if err != nil || !c.DemoUsers {
		t.Fatalf("--demo-users alone: %+v, %v", c, err)
	}
}

func TestLoadJWTKeySources(t *testing.T) {
	file := map[string]string{"DATABASE_URL": "postgres://a@h/db", "JWT_KEYS_FILE": "/etc/tradingd/keys"}
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantKeys  string
		wantFile  string
		wantError string
	}{
		{name: "env keys", env: required(), wantKeys: testKeys},
		{name: "env file", env: file, wantFile: "/etc/tradingd/keys"},
		{name: "flag file beats env keys", args: []string{"--jwt-keys-file", "/k"}, env: required(), wantFile: "/k"},
		{name: "flag keys beat env file", args: []string{"--jwt-keys", testKeys}, env: file, wantKeys: testKeys},
		{name: "both in env", env: with(required(), "JWT_KEYS_FILE", "/k"), wantError: "JWT_KEYS: "},
		{name: "neither", env: map[string]string{"DATABASE_URL": "postgres://a@h/db"}, wantError: "JWT_KEYS: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.args, envOf(tt.env))
			if tt.wantError != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantError) {
					t.Fatalf("error = %v, want one starting %q", err, tt.wantError)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if c.JWTKeys != tt.wantKeys || c.JWTKeysFile != tt.wantFile {
				t.Errorf("keys %q file %q, want %q %q", c.JWTKeys, c.JWTKeysFile, tt.wantKeys, tt.wantFile)
			}
		})
	}
}

// TestLoadErrors: a missing or malformed setting is one line that starts with its name.
func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		setting string
	}{
		{"no database", nil, map[string]string{"JWT_KEYS": testKeys}, "DATABASE_URL"},
		{"database not a DSN", nil, with(required(), "DATABASE_URL", "trading"), "DATABASE_URL"},
		{"database wrong scheme", nil, with(required(), "DATABASE_URL", "mysql://a@h/db"), "DATABASE_URL"},
		{"redis wrong scheme", nil, with(required(), "REDIS_URL", "http://cache:6379"), "REDIS_URL"},
		{"redis no host", nil, with(required(), "REDIS_URL", "redis:///0"), "REDIS_URL"},
		{"redis db not a number", nil, with(required(), "REDIS_URL", "redis://cache:6379/x"), "REDIS_URL"},
		// Options go-redis does not take, or cannot read: refused at start, not after it.
		// A password with "/" and "@" not percent-encoded: the host became "ss".
		{"database password not encoded", nil, with(required(), "DATABASE_URL", "postgres://app:p@ss/w0rd@db:5432/trading"), "DATABASE_URL"},
		{"redis password not encoded", nil, with(required(), "REDIS_URL", "redis://u:6379/ppppppp@cache:6379/0"), "REDIS_URL"}, // password "6379/ppppppp"
		{"redis unknown option", nil, with(required(), "REDIS_URL", "redis://cache:6379/0?bogus=1"), "REDIS_URL"},
		{"redis bad option value", nil, with(required(), "REDIS_URL", "redis://cache:6379/0?dial_timeout=abc"), "REDIS_URL"},
		{"jwt not a pair", nil, with(required(), "JWT_KEYS", "just-a-secret"), "JWT_KEYS"},
		{"jwt short secret", nil, with(required(), "JWT_KEYS", "k1:c2hvcnQ="), "JWT_KEYS"},
		{"access ttl", nil, with(required(), "ACCESS_TOKEN_TTL", "an hour"), "ACCESS_TOKEN_TTL"},
		{"access ttl zero", nil, with(required(), "ACCESS_TOKEN_TTL", "0s"), "ACCESS_TOKEN_TTL"},
		// Tokens carry whole seconds: a shorter lifetime issued tokens expired at once.
		{"access ttl under a second", nil, with(required(), "ACCESS_TOKEN_TTL", "500ms"), "ACCESS_TOKEN_TTL"},
		{"refresh ttl under a second", nil, with(required(), "REFRESH_TOKEN_TTL", "1ms"), "REFRESH_TOKEN_TTL"},
		{"access ttl flag", []string{"--access-token-ttl=60"}, required(), "ACCESS_TOKEN_TTL"},
		{"refresh ttl negative", nil, with(required(), "REFRESH_TOKEN_TTL", "-1h"), "REFRESH_TOKEN_TTL"},
		{"listen addr", nil, with(required(), "LISTEN_ADDR", "8080"), "LISTEN_ADDR"},
		{"admin addr port", nil, with(required(), "ADMIN_ADDR", ":99999"), "ADMIN_ADDR"},
		{"same addresses", nil, with(required(), "LISTEN_ADDR", ":7000", "ADMIN_ADDR", ":7000"), "ADMIN_ADDR"},
		{"symbol lower case", nil, with(required(), "SYMBOLS", "BTC/USD,eth/usd"), "SYMBOLS"},
		{"symbol empty entry", nil, with(required(), "SYMBOLS", "BTC/USD,"), "SYMBOLS"},
		{"max quantity zero", nil, with(required(), "MAX_QUANTITY", "0"), "MAX_QUANTITY"},
		{"max price negative", nil, with(required(), "MAX_PRICE", "-5"), "MAX_PRICE"},
		{"max price not a number", nil, with(required(), "MAX_PRICE", "lots"), "MAX_PRICE"},
		{"max price too precise", nil, with(required(), "MAX_PRICE", "0.000000001"), "MAX_PRICE"},
		// Each below 1e12, but a trade's P&L up to their product cannot be stored.
		{"max price x max quantity", nil, with(required(), "MAX_PRICE", "999999999999", "MAX_QUANTITY", "999999999999"), "MAX_PRICE"},
		{"max daily loss", nil, with(required(), "MAX_DAILY_LOSS", "NaN"), "MAX_DAILY_LOSS"},
		{"rate limit negative", nil, with(required(), "RATE_LIMIT_LOGIN", "-1"), "RATE_LIMIT_LOGIN"},
		{"rate limit not a number", nil, with(required(), "RATE_LIMIT_GLOBAL_PER_DAY", "1e3"), "RATE_LIMIT_GLOBAL_PER_DAY"},
		// Meant as "unlimited" (0 is), it overflowed the limiter: 0 remaining on allowed requests.
		{"rate limit beyond the TradingStack's int32", nil, with(required(), "RATE_LIMIT_DATA", "2147483648"), "RATE_LIMIT_DATA"},
		{"rate limit 1<<62", []string{"--rate-limit-trading", "4611686018427387904"}, required(), "RATE_LIMIT_TRADING"},
		{"cache ttl", nil, with(required(), "CACHE_SUMMARY_TTL", "10"), "CACHE_SUMMARY_TTL"},
		{"cache ttl beyond a day", nil, with(required(), "CACHE_SUMMARY_TTL", "48h"), "CACHE_SUMMARY_TTL"},
		{"db max conns zero", nil, with(required(), "DB_MAX_CONNS", "0"), "DB_MAX_CONNS"},
		{"db min over max", nil, with(required(), "DB_MAX_CONNS", "4", "DB_MIN_CONNS", "5"), "DB_MIN_CONNS"},
		{"db lifetime", nil, with(required(), "DB_MAX_CONN_LIFETIME", "forever"), "DB_MAX_CONN_LIFETIME"},
		{"trusted proxies mask", nil, with(required(), "TRUSTED_PROXIES", "10.0.0.0/33"), "TRUSTED_PROXIES"},
		{"trusted proxies name", nil, with(required(), "TRUSTED_PROXIES", "10.0.0.0/8,proxy.local"), "TRUSTED_PROXIES"},
		{"shutdown grace", nil, with(required(), "SHUTDOWN_GRACE", "soon"), "SHUTDOWN_GRACE"},
		{"log level", nil, with(required(), "LOG_LEVEL", "verbose"), "LOG_LEVEL"},
		{"log format", nil, with(required(), "LOG_FORMAT", "xml"), "LOG_FORMAT"},
		{"cache l1", nil, with(required(), "CACHE_L1", "maybe"), "CACHE_L1"},
		{"bootstrap password too long", nil, with(required(), "BOOTSTRAP_ADMIN_PASSWORD", strings.Repeat("p", 73)), "BOOTSTRAP_ADMIN_PASSWORD"},
		// Refused at the first start after connecting, as "the request has invalid fields":
		// the line did not say what was wrong with it.
		{"bootstrap password not UTF-8", nil, with(required(), "BOOTSTRAP_ADMIN_PASSWORD", "ppppppp\xff"), "BOOTSTRAP_ADMIN_PASSWORD"},
		{"demo users", nil, with(required(), "DEMO_USERS", "yes please"), "DEMO_USERS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(tt.args, envOf(tt.env))
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("error = %v (%T), want a configError", err, err)
			}
			if !strings.HasPrefix(err.Error(), tt.setting+": ") {
				t.Errorf("error %q does not start with %s", err, tt.setting)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is more than one line", err)
			}
			if strings.Contains(err.Error(), "0123456789abcdef") || strings.Contains(err.Error(), "ppppppp") {
				t.Errorf("error %q leaks a secret", err)
			}
		})
	}
}

func TestLoadBadCommandLine(t *testing.T) {
	for _, args := range [][]string{{"--no-such-flag"}, {"extra"}} {
		_, err := Load(args, envOf(required()))
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%q: error = %v, want a usage error", args, err)
		}
	}
	// A setting's flag without its value is that setting missing: one line naming it.
	_, err := Load([]string{"--access-token-ttl"}, envOf(required()))
	var ce *configError
	if !errors.As(err, &ce) || !strings.HasPrefix(err.Error(), "ACCESS_TOKEN_TTL: ") {
		t.Errorf("--access-token-ttl without a value: error = %v, want a setting error naming ACCESS_TOKEN_TTL", err)
	}
}

// migrate and user add need only DATABASE_URL: serve's required or malformed settings
// do not concern them.
func TestDatabaseOnlySettings(t *testing.T) {
	env := map[string]string{"DATABASE_URL": "postgres://a@h/db", "ACCESS_TOKEN_TTL": "garbage", "MAX_PRICE": "-1"}
	c, err := load(newFlagSet("migrate"), dbSettings, nil, envOf(env))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if c.DatabaseURL != "postgres://a@h/db" {
		t.Errorf("DatabaseURL = %q", c.DatabaseURL)
	}
	if _, err := load(newFlagSet("migrate"), dbSettings, nil, envOf(map[string]string{})); err == nil || !strings.HasPrefix(err.Error(), "DATABASE_URL: ") {
		t.Errorf("without DATABASE_URL: %v", err)
	}
}

func TestKeySetFromFile(t *testing.T) {
	c := &Config{JWTKeysFile: "/run/secrets/jwt"}
	files := map[string]string{"/run/secrets/jwt": testKeys + "\nk0:" + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", 32))) + "\n"}
	read := func(name string) ([]byte, error) {
		if s, ok := files[name]; ok {
			return []byte(s), nil
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	ks, err := c.KeySet(read)
	if err != nil {
		t.Fatalf("KeySet: %v", err)
	}
	if ks.SigningKeyID() != "k1" || ks.Len() != 2 {
		t.Errorf("signing kid %q, %d keys; want k1 and 2", ks.SigningKeyID(), ks.Len())
	}

	c.JWTKeysFile = "/missing"
	if _, err := c.KeySet(read); err == nil || !strings.HasPrefix(err.Error(), "JWT_KEYS_FILE: ") {
		t.Errorf("missing file: %v", err)
	}
	files["/bad"] = "k1:tooshort"
	c.JWTKeysFile = "/bad"
	if _, err := c.KeySet(read); err == nil || !strings.HasPrefix(err.Error(), "JWT_KEYS_FILE: ") {
		t.Errorf("bad file: %v", err)
	}
}

func TestRedactDSN(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres://app:hunter2@db:5432/trading?sslmode=disable", "postgres://app:xxxxx@db:5432/trading?sslmode=disable"},
		{"postgres://app@db/trading?password=hunter2", "postgres://app@db/trading?password=xxxxx"},
		{"host=db user=app password=hunter2 dbname=trading", "host=db user=app password=xxxxx dbname=trading"},
		{"host=db password='hun ter2' dbname=trading", "host=db password=xxxxx dbname=trading"},
		// The client key's passphrase (libpq's sslpassword) is a secret too.
		{"postgres://app@db/trading?sslmode=verify-full&sslpassword=hunter2", "postgres://app@db/trading?sslmode=verify-full&sslpassword=xxxxx"},
		{"host=db sslpassword=hunter2 dbname=trading", "host=db sslpassword=xxxxx dbname=trading"},
	}
	for _, tt := range tests {
		if got := redactDSN(tt.in); got != tt.want || strings.Contains(got, "hunter2") || strings.Contains(got, "hun ter2") {
			t.Errorf("redactDSN(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestConfigLogValueHasNoSecrets(t *testing.T) {
	c, err := Load(nil, envOf(with(required(),
		"DATABASE_URL", "postgres://app:hunter2@db/trading",
		"BOOTSTRAP_ADMIN_PASSWORD", "admin-s3cret",
		"REDIS_URL", "redis://:redis-s3cret@cache:6379/0")))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	slog.New(slog.NewJSONHandler(&b, nil)).Info("start", "config", c)
	for _, secret := range []string{"hunter2", "admin-s3cret", "redis-s3cret", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"} {
		if strings.Contains(b.String(), secret) {
			t.Errorf("log line leaks %q: %s", secret, b.String())
		}
	}
}
