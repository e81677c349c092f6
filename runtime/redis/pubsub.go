package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	goredis "github.com/redis/go-redis/v9"

	trading "github.com/findmy/trading-operator/runtime"
)

// Cache invalidation between replicas.
//
// Redis pub/sub is at most once, and PUBLISH returns as soon as Redis has queued the message,
// before any subscriber has acted on it. To give read-your-writes across replicas, an
// invalidation is acknowledged: PUBLISH reports how many subscribers got the message, each
// subscriber pushes an acknowledgement onto a list named in the message after its handler
// ran (its L1 entries are gone), and the publisher waits (bounded by AckTimeout) until it has
// as many acknowledgements as receivers. A replica that is not subscribed at that moment
// (reconnecting) is not counted; it flushes its whole L1 when it subscribes again (the
// onSubscribe callback), so a lost message costs at most a cold L1, never a stale read past
// the reconnect.
//
// The message is "<ack key> <user id>". The views it invalidates are the ack key's suffix
// after its last dot (".1" positions, ".2" summary, ".3" both): a replica of an older
// version that does not know views reads the user id as before, drops everything (more
// than needed, never less) and acknowledges on the same key, so a rolling upgrade mixes
// versions safely. A key without the suffix means every view.
//
// A trade's invalidation also names its symbol, whose mark moved for every holder: hex in
// the ack key before the views ("<nonce>~<hex symbol>.<views>"), where a replica of an
// older version does not look (it keeps its marks until they expire, as it always did).
//
// An ended login (logout, a refresh token reused) travels on the same channel so that every
// replica refuses its access tokens before the answer is sent: "<nonce>~s.0" and the login's
// id in place of the user's. A replica of an older version reads it as every view of a user
// that does not exist (it drops nothing) and acknowledges it.
//
// The ack key also names the publishing client ("inv-ack:<client id>:<nonce>.<views>"): the
// publisher has dropped its own entries before it published, so its own subscription only
// acknowledges the message instead of dropping the same entries a second time (which would
// throw away what its readers loaded fresh in between).

const channelName = "cache-invalidate"

// channel is the client's invalidation channel. Pub/sub ignores the database number, so
// deployments that share one Redis through different databases (redis://host/1 and
// redis://host/2, no key prefix) would otherwise share the channel: each would count the
// other's replicas among the receivers of every PUBLISH and wait for their
// acknowledgements, which never come (they go to the other database), so every approval
// would wait out AckTimeout. Database 0 keeps the plain name, which earlier versions use.
func channel(prefix string, db int) string {
	if db == 0 {
		return prefix + channelName
	}
	return prefix + channelName + "@db" + strconv.Itoa(db)
}

// AckTimeout bounds how long PublishInvalidation waits for the other replicas.
var AckTimeout = time.Second

// PublishInvalidation tells every other subscribed replica that userID's stale views are
// stale, and when symbol is set that its mark moved, and returns once all of them have
// dropped those L1 entries (the caller drops its own before), or with an error when Redis
// failed or some replica did not acknowledge within AckTimeout.
func (c *Client) PublishInvalidation(ctx context.Context, userID uuid.UUID, stale trading.Views, symbol string) error {
	suffix := ""
	if symbol != "" {
		suffix = "~" + hex.EncodeToString([]byte(symbol))
	}
	return c.publish(ctx, suffix+"."+strconv.Itoa(int(stale)), userID)
}

// sessionEndedSuffix ends the ack key of an ended login's announcement.
const sessionEndedSuffix = "~s.0"

// PublishSessionEnded tells every other subscribed client that the login sessionID ended,
// and returns once each has handled it (its OnSessionEnded handler returned), or with an
// error like PublishInvalidation.
func (c *Client) PublishSessionEnded(ctx context.Context, sessionID uuid.UUID) error {
	return c.publish(ctx, sessionEndedSuffix, sessionID)
}

// OnSessionEnded sets the handler of the ended logins other clients announce. They arrive
// on the invalidation subscription (SubscribeInvalidations), which must be running.
func (c *Client) OnSessionEnded(handle func(sessionID uuid.UUID)) {
	c.sessionEnded.Store(&handle)
}

// publish sends "<ack key> <id>" (the ack key ending in suffix) and waits for every
// receiver's acknowledgement.
func (c *Client) publish(ctx context.Context, suffix string, id uuid.UUID) error {
	nonce := make([]byte, 12)
	_, _ = rand.Read(nonce)
	ackKey := c.ackPrefix + hex.EncodeToString(nonce) + suffix
	msg := ackKey + " " + id.String()

	pctx, cancel := c.opCtx(ctx)
	receivers, err := c.rdb.Publish(pctx, c.channel, msg).Result()
	cancel()
	if err != nil {
		c.ReportError(err)
		return err
	}
	c.setHealthy(true, nil)

	deadline := time.Now().Add(AckTimeout)
	for got := int64(0); got < receivers; {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("redis: %w", trading.ErrNotAcknowledged)
		}
		bctx, cancel := context.WithTimeout(ctx, left+50*time.Millisecond)
		// BLPOP with a fractional timeout (Redis >= 6); go-redis' BLPop rounds to seconds.
		res, err := c.acks.Do(bctx, "BLPOP", ackKey, strconv.FormatFloat(left.Seconds(), 'f', 3, 64)).Result()
		cancel()
		if errors.Is(err, goredis.Nil) {
			continue // timed out server side; the loop checks the deadline
		} else if err != nil {
			c.ReportError(err)
			return err
		}
		if _, ok := res.([]any); ok {
			got++
		}
	}
	return nil
}

// SubscribeInvalidations runs a subscription until the client is closed or stop is called.
// onSubscribe runs on every (re)subscription, before any message of it is handled: the
// caller flushes its L1 there, because messages sent while it was not subscribed are lost.
// onLost runs when a subscription ends (the connection failed or a probe of it did not
// answer): from then until the next onSubscribe, invalidations may be missed, so the caller
// must not serve what they would have dropped. onInvalidate runs for every invalidation
// another client published (symbol is "" unless a trade moved its mark); the acknowledgement
// is sent after it returns (at once for this client's own).
func (c *Client) SubscribeInvalidations(onSubscribe, onLost func(), onInvalidate func(userID uuid.UUID, stale trading.Views, symbol string)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	c.done.Add(1)
	go func() {
		defer c.done.Done()
		go func() {
			select {
			case <-c.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		backoff := 50 * time.Millisecond
		for ctx.Err() == nil {
			err := c.subscribeOnce(ctx, onSubscribe, onInvalidate)
			onLost()
			if ctx.Err() != nil {
				return
			}
			c.ReportError(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, time.Second)
		}
	}()
	return cancel
}

// subscribeOnce holds one subscription connection until it fails.
func (c *Client) subscribeOnce(ctx context.Context, onSubscribe func(), onInvalidate func(uuid.UUID, trading.Views, string)) error {
	ps := c.rdb.Subscribe(ctx, c.channel)
	defer ps.Close()
	// A blocked read does not watch ctx: closing the connection ends it at once.
	closed := make(chan struct{})
	defer close(closed)
	go func() {
		select {
		case <-ctx.Done():
			ps.Close()
		case <-closed:
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, err := ps.ReceiveTimeout(ctx, 5*time.Second)
		if err != nil {
			var nerr interface{ Timeout() bool }
			if errors.As(err, &nerr) && nerr.Timeout() {
				// Idle: make sure the connection is still alive (a silent partition
				// otherwise leaves us believing we are subscribed).
				pctx, cancel := context.WithTimeout(ctx, probeTimeout)
				perr := ps.Ping(pctx)
				cancel()
				if perr == nil {
					continue
				}
				return perr
			}
			return err
		}
		switch m := m.(type) {
		case *goredis.Subscription:
			if m.Kind == "subscribe" {
				c.setHealthy(true, nil)
				onSubscribe()
			}
		case *goredis.Message:
			ackKey, user, ok := strings.Cut(m.Payload, " ")
			id, err := uuid.Parse(user)
			if !ok || err != nil {
				continue
			}
			switch {
			case strings.HasPrefix(ackKey, c.ackPrefix): // our own: handled before publishing
			case strings.HasSuffix(ackKey, sessionEndedSuffix):
				if handle := c.sessionEnded.Load(); handle != nil {
					(*handle)(id)
				}
			default:
				onInvalidate(id, viewsOf(ackKey), symbolOf(ackKey))
			}
			// The publisher waits up to AckTimeout; so may the acknowledgement (a busy
			// machine), rather than give up after OpTimeout and make the publisher wait anyway.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), AckTimeout)
			pipe := c.acks.TxPipeline()
			pipe.RPush(actx, ackKey, "1")
			pipe.Expire(actx, ackKey, 10*time.Second)
			_, err = pipe.Exec(actx)
			cancel()
			c.ReportError(err)
		}
	}
}

// symbolOf reads the symbol a trade's invalidation names from its ack key (see the top of
// this file); "" when there is none.
func symbolOf(ackKey string) string {
	colon := strings.LastIndexByte(ackKey, ':')
	tilde := strings.LastIndexByte(ackKey, '~')
	dot := strings.LastIndexByte(ackKey, '.')
	if tilde < colon || dot < tilde {
		return ""
	}
	b, err := hex.DecodeString(ackKey[tilde+1 : dot])
	if err != nil {
		return ""
	}
	return string(b)
}

// viewsOf reads the views an invalidation names from its ack key's suffix (see the top of
// this file); anything else means every view.
func viewsOf(ackKey string) trading.Views {
	dot := strings.LastIndexByte(ackKey, '.')
	if dot < 0 || strings.LastIndexByte(ackKey, ':') > dot {
		return trading.AllViews
	}
	v, err := strconv.Atoi(ackKey[dot+1:])
	if err != nil || v <= 0 || trading.Views(v)&^trading.AllViews != 0 {
		return trading.AllViews
	}
	return trading.Views(v)
}
