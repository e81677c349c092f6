// Package trading is the domain of tradingd: orders, trades, positions and users,
// the service interfaces that the dependency packages implement (runtime/postgres,
// runtime/redis, runtime/http) and coded errors that one place maps to HTTP.
//
// Nothing here imports a database, a cache or net/http; the position maths are pure
// functions so that they can be tested as a table and reused by every implementation.
package trading

// Version is the build's version, set with -ldflags at build time.
var Version = "dev"
