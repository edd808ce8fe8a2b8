// Package lightnats is the simulator's NATS connection for one device (a device.Conn): exactly the part
// of the NATS client protocol the device engine uses, and nothing it does not. It connects with the
// device's user and password (as the server's auth callout demands), subscribes the device's target
// subject, makes requests with headers (the JetStream direct get of the latest target, and reports
// acknowledged by JetStream) over one wildcard reply subscription under the device's inbox prefix,
// answers and sends PINGs, and reconnects forever like the agent's nats.go connection (wait plus jitter
// before every attempt, no buffering while disconnected).
//
// Why it exists: nats.go keeps five goroutines (reader, flusher, callback dispatcher, one per
// subscription callback, one for the request mux) and a fixed 32 KiB read buffer plus a write buffer per
// connection: about 77 KiB of heap and stacks per simulated device, where a simulator holding 100,000
// devices in 4 GiB has about 41 KiB for everything. This connection keeps one goroutine (reading,
// answering and sending pings, reconnecting) whose stack stays at its 4 KiB floor, a 256-byte read
// buffer that grows only for a long line, and writes each request in one call from the caller's
// goroutine, without a write buffer. Payloads are read into their own allocation and handed over;
// target messages reach the device on a goroutine that lives only while they wait, so decoding them
// does not grow the reader's stack. It does not speak TLS or websocket (Connect says so with
// ErrUnsupported), nor follow the urls a cluster advertises; the real agent keeps nats.go.
package lightnats

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/fleetshift/fleetshift/agent/device"
)

// ErrUnsupported wraps the reasons this connection cannot serve a server (TLS, websocket); a caller may
// then use nats.go instead.
var ErrUnsupported = errors.New("lightnats: unsupported")

// ErrDisconnected is returned by a request made, or waiting, while the connection is down.
var ErrDisconnected = errors.New("lightnats: not connected")

// Options tune connections; the zero value is the agent's own settings.
type Options struct {
	// Dial opens the TCP connection (default: net.Dialer with Timeout).
	Dial func(network, address string) (net.Conn, error)
	// Timeout bounds dialling and the handshake (default 2s, as nats.go).
	Timeout time.Duration
	// PingInterval is how long a connection may be silent before this side sends a PING; the
	// connection is dropped when MaxPingsOut of them go unanswered (defaults 2m and 2, as nats.go).
	PingInterval time.Duration
	MaxPingsOut  int
	// ReconnectWait and ReconnectJitter: before every reconnect attempt the connection waits
	// ReconnectWait plus a random part of ReconnectJitter (defaults device.ReconnectWait/Jitter).
	ReconnectWait, ReconnectJitter time.Duration
	// WriteTimeout bounds a write that has no context deadline (PONG, PING; default 10s).
	WriteTimeout time.Duration
	// StallProbe: after a request times out, the server must answer a PING within it, else the
	// connection is taken for stalled and made again (default device.StallProbe; see device.Conn).
	StallProbe time.Duration
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 2 * time.Minute
	}
	if o.MaxPingsOut <= 0 {
		o.MaxPingsOut = 2
	}
	if o.ReconnectWait <= 0 {
		o.ReconnectWait = device.ReconnectWait
	}
	if o.ReconnectJitter <= 0 {
		o.ReconnectJitter = device.ReconnectJitter
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.StallProbe <= 0 {
		o.StallProbe = device.StallProbe
	}
	return o
}

// Dialer returns a device.Dialer opening connections with o.
func Dialer(o Options) device.Dialer {
	return func(s device.ConnSpec) (device.Conn, error) { return Connect(s, o) }
}

const (
	targetSID = "1"
	replySID  = "2"
	// smallBuf is the read buffer a connection keeps; protocol lines are shorter (payloads are read
	// into their own allocation).
	smallBuf = 256
	// maxLine bounds a protocol line (an INFO line with many cluster urls is the longest).
	maxLine = 64 << 10
)

// Conn is one device's connection.
type Conn struct {
	spec  device.ConnSpec
	o     Options
	addrs []string
	// replyPrefix is "<inbox prefix>.<random>."; replies arrive on replyPrefix + request number.
	replyPrefix string
	connected   atomic.Bool
	done        chan struct{}
	wg          sync.WaitGroup
	// probing is set while a stall probe runs; lastIn is when the reader last got a line then (unix ns).
	probing atomic.Bool
	lastIn  atomic.Int64

	mu      sync.Mutex
	nc      net.Conn // the current connection; nil while disconnected
	closed  bool
	seq     uint64
	waiting []waiter
	// maxPayload is the server's limit (INFO max_payload).
	maxPayload int64
	warned     bool
	// inbox holds target messages waiting for OnMessage; delivering says a goroutine drains it.
	inbox      [][]byte
	delivering bool

	wmu sync.Mutex // serialises writes to nc
}

type waiter struct {
	seq uint64
	ch  chan *nats.Msg
}

// Connect opens a connection for spec: it tries the server once now and, if that fails, keeps trying in
// the background (spec.OnConnect says when it is up). It fails only when the url is not one this
// connection can serve.
func Connect(spec device.ConnSpec, o Options) (*Conn, error) {
	addrs, err := parseURLs(spec.URL)
	if err != nil {
		return nil, err
	}
	c := &Conn{spec: spec, o: o.withDefaults(), addrs: addrs, done: make(chan struct{}),
		replyPrefix: spec.InboxPrefix + "." + randomToken() + "."}
	nc, rd, err := c.handshake(0)
	if errors.Is(err, ErrUnsupported) {
		return nil, err
	}
	c.wg.Add(1)
	go c.run(nc, rd)
	return c, nil
}

func parseURLs(s string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if !strings.Contains(part, "://") {
			part = "nats://" + part
		}
		u, err := url.Parse(part)
		if err != nil {
			return nil, fmt.Errorf("lightnats: url %q: %w", part, err)
		}
		if u.Scheme != "nats" {
			return nil, fmt.Errorf("%w: url scheme %q (only nats://)", ErrUnsupported, u.Scheme)
		}
		if u.User != nil {
			return nil, fmt.Errorf("%w: credentials in the url", ErrUnsupported)
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "4222")
		}
		out = append(out, host)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("lightnats: no server in url %q", s)
	}
	return out, nil
}

func randomToken() string {
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	b := make([]byte, 12)
	for i := range b {
		b[i] = alphabet[rand.IntN(len(alphabet))]
	}
	return string(b)
}

// Connected implements device.Conn.
func (c *Conn) Connected() bool { return c.connected.Load() }

// Close implements device.Conn: it ends the connection for good and waits for its goroutine.
func (c *Conn) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	close(c.done)
	nc := c.nc
	c.mu.Unlock()
	if nc != nil {
		_ = nc.Close()
	}
	c.wg.Wait()
}

// run keeps the connection: serve the current one until it fails, wait, reconnect, until Close.
func (c *Conn) run(nc net.Conn, rd *reader) {
	defer c.wg.Done()
	attempt := 1
	for {
		if nc != nil {
			err := c.serve(nc, rd)
			if c.isClosed() {
				return
			}
			if c.spec.OnDisconnect != nil {
				c.spec.OnDisconnect(err)
			}
		}
		wait := c.o.ReconnectWait + rand.N(c.o.ReconnectJitter)
		t := time.NewTimer(wait)
		select {
		case <-c.done:
			t.Stop()
			return
		case <-t.C:
		}
		var err error
		nc, rd, err = c.handshake(attempt)
		attempt++
		if err != nil && c.spec.OnError != nil && errors.Is(err, ErrUnsupported) {
			c.mu.Lock()
			first := !c.warned
			c.warned = true
			c.mu.Unlock()
			if first {
				c.spec.OnError(err)
			}
		}
	}
}

func (c *Conn) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// serverInfo is the part of the server's INFO this connection needs.
type serverInfo struct {
	TLSRequired bool  `json:"tls_required"`
	Headers     bool  `json:"headers"`
	MaxPayload  int64 `json:"max_payload"`
}

type connectInfo struct {
	Verbose      bool   `json:"verbose"`
	Pedantic     bool   `json:"pedantic"`
	User         string `json:"user,omitempty"`
	Pass         string `json:"pass,omitempty"`
	TLS          bool   `json:"tls_required"`
	Name         string `json:"name"`
	Lang         string `json:"lang"`
	Version      string `json:"version"`
	Protocol     int    `json:"protocol"`
	Echo         bool   `json:"echo"`
	Headers      bool   `json:"headers"`
	NoResponders bool   `json:"no_responders"`
}

// handshake dials server attempt (round robin over the urls), reads its INFO, sends CONNECT and a
// PING, waits for the PONG (or the refusal) and subscribes. It returns the connection ready to serve.
func (c *Conn) handshake(attempt int) (net.Conn, *reader, error) {
	addr := c.addrs[attempt%len(c.addrs)]
	dial := c.o.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: c.o.Timeout}).Dial
	}
	nc, err := dial("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("lightnats: dial %s: %w", addr, err)
	}
	nc, rd, err := c.handshakeOn(nc)
	if err != nil {
		_ = nc.Close()
		return nil, nil, err
	}
	return nc, rd, nil
}

func (c *Conn) handshakeOn(nc net.Conn) (net.Conn, *reader, error) {
	_ = nc.SetDeadline(time.Now().Add(c.o.Timeout))
	rd := &reader{conn: nc, buf: make([]byte, 1024)}
	line, err := rd.line()
	if err != nil {
		return nc, nil, fmt.Errorf("lightnats: read INFO: %w", err)
	}
	op, rest := splitOp(line)
	if op != "INFO" {
		return nc, nil, fmt.Errorf("lightnats: expected INFO, got %.80q", line)
	}
	var info serverInfo
	if err := json.Unmarshal(rest, &info); err != nil {
		return nc, nil, fmt.Errorf("lightnats: read INFO: %w", err)
	}
	if info.TLSRequired {
		return nc, nil, fmt.Errorf("%w: the server requires TLS", ErrUnsupported)
	}
	if !info.Headers {
		return nc, nil, fmt.Errorf("%w: the server does not support headers", ErrUnsupported)
	}
	ci, err := json.Marshal(connectInfo{User: c.spec.User, Pass: c.spec.Password, Name: c.spec.Name, Lang: "go",
		Version: "lightnats-1", Protocol: 1, Echo: true, Headers: true, NoResponders: true})
	if err != nil {
		return nc, nil, fmt.Errorf("lightnats: %w", err)
	}
	var b bytes.Buffer
	b.WriteString("CONNECT ")
	b.Write(ci)
	b.WriteString("\r\nPING\r\n")
	if _, err := nc.Write(b.Bytes()); err != nil {
		return nc, nil, fmt.Errorf("lightnats: send CONNECT: %w", err)
	}
	for {
		line, err := rd.line()
		if err != nil {
			return nc, nil, fmt.Errorf("lightnats: connect: %w", err)
		}
		op, rest := splitOp(line)
		switch op {
		case "PONG":
		case "-ERR":
			return nc, nil, fmt.Errorf("lightnats: connect refused: %s", errText(rest))
		case "+OK", "INFO":
			continue
		case "PING":
			if _, err := nc.Write([]byte("PONG\r\n")); err != nil {
				return nc, nil, fmt.Errorf("lightnats: connect: %w", err)
			}
			continue
		default:
			return nc, nil, fmt.Errorf("lightnats: connect: unexpected %.80q", line)
		}
		break
	}
	sub := "SUB " + c.spec.Subject + " " + targetSID + "\r\nSUB " + c.replyPrefix + "* " + replySID + "\r\n"
	if _, err := nc.Write([]byte(sub)); err != nil {
		return nc, nil, fmt.Errorf("lightnats: subscribe: %w", err)
	}
	_ = nc.SetDeadline(time.Time{})
	rd.shrink()
	c.mu.Lock()
	c.maxPayload = info.MaxPayload
	c.mu.Unlock()
	return nc, rd, nil
}

// serve makes nc the current connection and reads from it until it fails or the connection is closed.
func (c *Conn) serve(nc net.Conn, rd *reader) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = nc.Close()
		return net.ErrClosed
	}
	c.nc = nc
	c.connected.Store(true)
	c.mu.Unlock()
	if c.spec.OnConnect != nil {
		c.spec.OnConnect()
	}
	err := c.readLoop(nc, rd)
	c.mu.Lock()
	c.nc = nil
	c.connected.Store(false)
	waiting := c.waiting
	c.waiting = nil
	c.mu.Unlock()
	_ = nc.Close()
	for _, w := range waiting {
		w.ch <- nil // the request fails now rather than at its timeout
	}
	return err
}

func (c *Conn) readLoop(nc net.Conn, rd *reader) error {
	pingsOut := 0
	for {
		_ = nc.SetReadDeadline(time.Now().Add(c.o.PingInterval))
		line, err := rd.line()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if pingsOut >= c.o.MaxPingsOut {
				return nats.ErrStaleConnection
			}
			pingsOut++
			if err := c.write(nc, []byte("PING\r\n"), time.Time{}); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		pingsOut = 0
		if c.probing.Load() {
			c.lastIn.Store(time.Now().UnixNano())
		}
		op, rest := splitOp(line)
		switch op {
		case "MSG", "HMSG":
			if err := c.message(rd, op == "HMSG", rest); err != nil {
				return err
			}
		case "PING":
			if err := c.write(nc, []byte("PONG\r\n"), time.Time{}); err != nil {
				return err
			}
		case "PONG", "+OK", "INFO":
		case "-ERR":
			msg := errText(rest)
			var err error
			if strings.Contains(strings.ToLower(msg), "permissions violation") {
				err = fmt.Errorf("%w: %s", nats.ErrPermissionViolation, msg)
			} else {
				err = errors.New("nats: " + msg)
			}
			if c.spec.OnError != nil {
				c.spec.OnError(err)
			}
		default:
			return fmt.Errorf("lightnats: unexpected %.80q", line)
		}
	}
}

// message reads one MSG or HMSG (its line's arguments in args) and delivers it.
func (c *Conn) message(rd *reader, headers bool, args []byte) error {
	f := bytes.Fields(args)
	want := 3
	if headers {
		want = 4
	}
	if len(f) != want && len(f) != want+1 {
		return fmt.Errorf("lightnats: bad message line %.80q", args)
	}
	// Copied out before the payload is read: reading may reuse the buffer args points into.
	subj, sid := string(f[0]), string(f[1])
	reply := ""
	if len(f) == want+1 {
		reply = string(f[2])
	}
	hdrLen := 0
	total, err := strconv.Atoi(string(f[len(f)-1]))
	if err == nil && headers {
		hdrLen, err = strconv.Atoi(string(f[len(f)-2]))
	}
	if err != nil || total < 0 || hdrLen < 0 || hdrLen > total || total > maxMessage {
		return fmt.Errorf("lightnats: bad message line %.80q", args)
	}
	payload, err := rd.payload(total)
	if err != nil {
		return err
	}
	m := &nats.Msg{Subject: subj, Reply: reply, Data: payload[hdrLen:]}
	if hdrLen > 0 {
		if m.Header, err = nats.DecodeHeadersMsg(payload[:hdrLen]); err != nil {
			return fmt.Errorf("lightnats: message headers: %w", err)
		}
	}
	switch sid {
	case targetSID:
		c.deliver(m.Data)
	case replySID:
		seq, err := strconv.ParseUint(strings.TrimPrefix(subj, c.replyPrefix), 36, 64)
		if err != nil {
			return nil // not one of ours
		}
		c.mu.Lock()
		i := slices.IndexFunc(c.waiting, func(w waiter) bool { return w.seq == seq })
		var ch chan *nats.Msg
		if i >= 0 {
			ch = c.waiting[i].ch
			c.waiting = slices.Delete(c.waiting, i, i+1)
		}
		c.mu.Unlock()
		if ch != nil {
			ch <- m // buffered: never blocks
		}
	}
	return nil
}

// deliver hands data to OnMessage, in order, on a goroutine that lives only while messages wait: the
// device's own code (decoding a target) grows a goroutine's stack, and the reader's stack, which every
// connection keeps while it waits, is better left small.
func (c *Conn) deliver(data []byte) {
	if c.spec.OnMessage == nil {
		return
	}
	c.mu.Lock()
	c.inbox = append(c.inbox, data)
	start := !c.delivering
	c.delivering = true
	if start {
		c.wg.Add(1)
	}
	c.mu.Unlock()
	if start {
		go c.drain()
	}
}

func (c *Conn) drain() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		if len(c.inbox) == 0 {
			c.inbox = nil
			c.delivering = false
			c.mu.Unlock()
			return
		}
		data := c.inbox[0]
		c.inbox = c.inbox[1:]
		c.mu.Unlock()
		c.spec.OnMessage(data)
	}
}

// maxMessage bounds a message this connection accepts (the server's default max_payload is 1 MiB).
const maxMessage = 64 << 20

// write sends b on nc with a deadline (zero: WriteTimeout from now); a failed write closes nc, so the
// reader notices and reconnects.
func (c *Conn) write(nc net.Conn, b []byte, deadline time.Time) error {
	if deadline.IsZero() {
		deadline = time.Now().Add(c.o.WriteTimeout)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = nc.SetWriteDeadline(deadline)
	if _, err := nc.Write(b); err != nil {
		_ = nc.Close()
		return fmt.Errorf("lightnats: write: %w", err)
	}
	return nil
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Request implements device.Conn.
func (c *Conn) Request(ctx context.Context, subj string, hdr nats.Header, data []byte) (*nats.Msg, error) {
	if subj == "" || strings.ContainsAny(subj, " \t\r\n") {
		return nil, nats.ErrBadSubject
	}
	ch := make(chan *nats.Msg, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, nats.ErrConnectionClosed
	}
	nc, limit := c.nc, c.maxPayload
	if nc == nil {
		c.mu.Unlock()
		return nil, ErrDisconnected
	}
	c.seq++
	seq := c.seq
	c.waiting = append(c.waiting, waiter{seq, ch})
	c.mu.Unlock()
	defer c.forget(seq)

	b := bufPool.Get().(*bytes.Buffer)
	b.Reset()
	defer bufPool.Put(b)
	reply := c.replyPrefix + strconv.FormatUint(seq, 36)
	var hb []byte
	if len(hdr) > 0 {
		hb = encodeHeader(hdr)
		fmt.Fprintf(b, "HPUB %s %s %d %d\r\n", subj, reply, len(hb), len(hb)+len(data))
		b.Write(hb)
	} else {
		fmt.Fprintf(b, "PUB %s %s %d\r\n", subj, reply, len(data))
	}
	if limit > 0 && int64(len(hb)+len(data)) > limit {
		return nil, nats.ErrMaxPayload
	}
	b.Write(data)
	b.WriteString("\r\n")
	deadline, _ := ctx.Deadline()
	if err := c.write(nc, b.Bytes(), deadline); err != nil {
		return nil, err
	}
	select {
	case m := <-ch:
		if m == nil {
			return nil, ErrDisconnected
		}
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
			return nil, nats.ErrNoResponders
		}
		return m, nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			c.probe(nc)
		}
		return nil, ctx.Err()
	case <-c.done:
		return nil, nats.ErrConnectionClosed
	}
}

// probe sends nc a PING and closes it when no line at all arrives within StallProbe, so the reader
// reconnects (see device.Conn). One probe runs at a time.
func (c *Conn) probe(nc net.Conn) {
	if !c.probing.CompareAndSwap(false, true) {
		return
	}
	since := time.Now().UnixNano()
	go func() {
		defer c.probing.Store(false)
		if err := c.write(nc, []byte("PING\r\n"), time.Time{}); err != nil {
			return // write closed nc: the reader reconnects
		}
		t := time.NewTimer(c.o.StallProbe)
		defer t.Stop()
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if c.lastIn.Load() < since {
			_ = nc.Close()
		}
	}()
}

func (c *Conn) forget(seq uint64) {
	c.mu.Lock()
	c.waiting = slices.DeleteFunc(c.waiting, func(w waiter) bool { return w.seq == seq })
	if len(c.waiting) == 0 && cap(c.waiting) > 4 {
		c.waiting = nil
	}
	c.mu.Unlock()
}

// encodeHeader renders hdr as a NATS header block.
func encodeHeader(hdr nats.Header) []byte {
	var b bytes.Buffer
	b.WriteString("NATS/1.0\r\n")
	for _, k := range slices.Sorted(maps.Keys(hdr)) {
		for _, v := range hdr[k] {
			b.WriteString(k)
			b.WriteString(": ")
			b.WriteString(v)
			b.WriteString("\r\n")
		}
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

func splitOp(line []byte) (string, []byte) {
	op, rest, _ := bytes.Cut(line, []byte(" "))
	switch string(op) { // no allocation for the known operations
	case "MSG":
		return "MSG", rest
	case "HMSG":
		return "HMSG", rest
	case "PING":
		return "PING", rest
	case "PONG":
		return "PONG", rest
	case "+OK":
		return "+OK", rest
	case "-ERR":
		return "-ERR", rest
	case "INFO":
		return "INFO", rest
	}
	return strings.ToUpper(string(op)), rest
}

func errText(b []byte) string {
	return strings.Trim(strings.TrimSpace(string(b)), "'")
}

// reader reads protocol lines and payloads from conn through a small buffer.
type reader struct {
	conn net.Conn
	buf  []byte
	r, w int // unread data is buf[r:w]
}

// line returns the next line without its CRLF; it is valid until the next read.
func (rd *reader) line() ([]byte, error) {
	for {
		if i := bytes.IndexByte(rd.buf[rd.r:rd.w], '\n'); i >= 0 {
			line := rd.buf[rd.r : rd.r+i]
			rd.r += i + 1
			return bytes.TrimSuffix(line, []byte("\r")), nil
		}
		if rd.w-rd.r >= maxLine {
			return nil, errors.New("lightnats: protocol line too long")
		}
		if err := rd.fill(); err != nil {
			return nil, err
		}
	}
}

// payload returns the next n bytes (in a new slice the caller keeps) and consumes the CRLF after them.
func (rd *reader) payload(n int) ([]byte, error) {
	out := make([]byte, n)
	got := copy(out, rd.buf[rd.r:rd.w])
	rd.r += got
	if got < n {
		if _, err := io.ReadFull(rd.conn, out[got:]); err != nil {
			return nil, err
		}
	}
	for rd.w-rd.r < 2 {
		if err := rd.fill(); err != nil {
			return nil, err
		}
	}
	if rd.buf[rd.r] != '\r' || rd.buf[rd.r+1] != '\n' {
		return nil, errors.New("lightnats: payload not followed by CRLF")
	}
	rd.r += 2
	rd.shrink()
	return out, nil
}

// fill reads more into the buffer, compacting or growing it first when it is full.
func (rd *reader) fill() error {
	if rd.r > 0 {
		n := copy(rd.buf, rd.buf[rd.r:rd.w])
		rd.r, rd.w = 0, n
	}
	if rd.w == len(rd.buf) {
		rd.buf = append(rd.buf, make([]byte, len(rd.buf))...)
	}
	n, err := rd.conn.Read(rd.buf[rd.w:])
	rd.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = errors.New("lightnats: empty read")
	}
	return err
}

// shrink goes back to a small buffer after a long line, when what is unread fits.
func (rd *reader) shrink() {
	if len(rd.buf) <= smallBuf || rd.w-rd.r > smallBuf {
		return
	}
	small := make([]byte, smallBuf)
	rd.w = copy(small, rd.buf[rd.r:rd.w])
	rd.r = 0
	rd.buf = small
}
