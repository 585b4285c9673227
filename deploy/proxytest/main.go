// Command proxytest checks the chat server through a real reverse proxy
// (nginx or Caddy, started by deploy/test.sh with the configs in deploy/)
// the way a browser on the public site would reach it: over https and wss,
// to the public host name on port 443, with that site's Origin.
//
// Every connection is dialled to the proxy on loopback instead of to the
// host name, so the client sends exactly what a browser sends to
// https://chat.example.com/ (Host without a port, SNI, Origin) and the
// proxy's own certificate is verified against the CA the test made.
//
// Each check runs from a loopback address of its own (127.0.0.10, …): the
// server runs with -sessions-per-ip 2, and the proxy sees each check as a
// different client. The per-address checks use that on purpose: the
// address the proxy saw is what counts, never an X-Forwarded-For the client
// wrote itself.
//
// It prints one PASS or FAIL line per check and exits 1 if any failed.
// It lives in a module of its own so the server's go.mod keeps its one
// dependency.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// config is what the script tells the client.
type config struct {
	name        string        // the proxy's name, for the output
	host        string        // the public host name of the shipped config
	httpsAddr   string        // where the proxy listens for https (loopback)
	httpAddr    string        // where it listens for plain http
	caFile      string        // the CA (PEM) that signed the proxy's certificate
	pollTimeout time.Duration // the server's -poll-timeout
	idle        time.Duration // how long the idle WebSocket stays silent
}

func main() {
	var cfg config
	freePorts := flag.Int("freeports", 0, "print this many free loopback ports and exit")
	flag.StringVar(&cfg.name, "name", "proxy", "the proxy's name, for the output")
	flag.StringVar(&cfg.host, "host", "chat.example.com", "the public host name")
	flag.StringVar(&cfg.httpsAddr, "https", "", "the proxy's https address")
	flag.StringVar(&cfg.httpAddr, "http", "", "the proxy's plain http address")
	flag.StringVar(&cfg.caFile, "ca", "", "the CA certificate (PEM) to trust")
	flag.DurationVar(&cfg.pollTimeout, "poll-timeout", 5*time.Second, "the server's -poll-timeout")
	flag.DurationVar(&cfg.idle, "idle", 65*time.Second, "how long a WebSocket stays idle (beyond the proxy's default read timeout)")
	flag.Parse()
	if *freePorts > 0 {
		if err := printFreePorts(*freePorts); err != nil {
			fmt.Fprintln(os.Stderr, "proxytest:", err)
			os.Exit(1)
		}
		return
	}
	t, err := newTester(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxytest:", err)
		os.Exit(1)
	}
	if !t.run() {
		os.Exit(1)
	}
}

// printFreePorts prints n ports that were free on 127.0.0.1 a moment ago.
func printFreePorts(n int) error {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	}
	return nil
}

// tester runs the checks and reports each one.
type tester struct {
	cfg    config
	roots  *x509.CertPool
	origin string // the site's own Origin

	mu     sync.Mutex // guards failed and the output's lines
	failed bool
}

func newTester(cfg config) (*tester, error) {
	pem, err := os.ReadFile(cfg.caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", cfg.caFile)
	}
	return &tester{cfg: cfg, roots: roots, origin: "https://" + cfg.host}, nil
}

// report prints one check's result.
func (t *tester) report(check string, err error, detail string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.failed = true
		fmt.Printf("FAIL %s: %s: %v\n", t.cfg.name, check, err)
		return
	}
	fmt.Printf("PASS %s: %s: %s\n", t.cfg.name, check, detail)
}

// check is one named check: it returns what it saw, or why it failed.
type check struct {
	name string
	run  func(ctx context.Context) (string, error)
}

// run waits for the proxy, then runs every check at once (the idle
// WebSocket takes longest), and reports whether all passed.
func (t *tester) run() bool {
	if err := t.waitReady(30 * time.Second); err != nil {
		t.report("proxy answers", err, "")
		return false
	}
	checks := []check{
		{"http redirects to https", t.checkRedirect},
		{"GET /healthz over https", t.checkHealth},
		{"WebSocket chat between two clients", t.checkChat},
		{"long-poll: POST opens, GET returns events", t.checkPoll},
		{"idle WebSocket outlives the proxy's default read timeout", t.checkIdle},
		{"form POST answers 303", t.checkForm},
		{"cross-site POST refused 403", t.checkCrossSitePost},
		{"cross-site WebSocket handshake refused 403", t.checkCrossSiteWS},
		{"per-address limits count the address the proxy saw", t.checkPerAddress},
		{"form rate bucket per forwarded address", t.checkFormRate},
	}
	var wg sync.WaitGroup
	for _, c := range checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), t.cfg.idle+60*time.Second)
			defer cancel()
			detail, err := c.run(ctx)
			t.report(c.name, err, detail)
		})
	}
	wg.Wait()
	return !t.failed
}

// waitReady waits until the proxy answers /healthz over https (Caddy makes
// its certificate after it starts listening).
func (t *tester) waitReady(limit time.Duration) error {
	c := t.client("127.0.0.1", false)
	deadline := time.Now().Add(limit)
	for {
		resp, err := c.Get(t.url("/healthz"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /healthz: %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (t *tester) url(path string) string { return "https://" + t.cfg.host + path }

// client is an HTTP client that connects from the loopback address src to
// the proxy, whatever host the URL names: port 443 goes to the proxy's
// https address, port 80 to its http one. HTTP/2 where h2 is set and the
// proxy offers it (as browsers do for pages and long-polls); a WebSocket
// handshake needs HTTP/1.1.
func (t *tester) client(src string, h2 bool) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	return &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				_, port, _ := net.SplitHostPort(addr)
				to := t.cfg.httpsAddr
				if port == "80" {
					to = t.cfg.httpAddr
				}
				return d.DialContext(ctx, network, to)
			},
			TLSClientConfig:   &tls.Config{RootCAs: t.roots},
			ForceAttemptHTTP2: h2,
		},
		// Redirects are checked, not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       t.cfg.pollTimeout + 20*time.Second,
	}
}

// envelope is one event of PROTOCOL.md section 1.
type envelope struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data,omitempty"`
	Ack   int64           `json:"ack,omitempty"`
	Seq   int64           `json:"seq,omitempty"`
}

// decodeEvents reads a message or a body: one envelope or an array of them.
func decodeEvents(b []byte) ([]envelope, error) {
	if s := strings.TrimSpace(string(b)); strings.HasPrefix(s, "[") {
		var list []envelope
		err := json.Unmarshal(b, &list)
		return list, err
	}
	var e envelope
	err := json.Unmarshal(b, &e)
	return []envelope{e}, err
}

// ws is one WebSocket client.
type ws struct {
	conn  *websocket.Conn
	pings atomic.Int32 // pings received from the server
	ack   int64
	// pending holds the events of a batch (one frame, a JSON array) that
	// waitFor has not looked at yet: the next call starts with them.
	pending []envelope
}

// dialWS opens a WebSocket from src with the site's Origin (as a browser
// would) and extra handshake headers.
func (t *tester) dialWS(ctx context.Context, src, query string, header http.Header) (*ws, *http.Response, error) {
	h := http.Header{"Origin": {t.origin}}
	for k, v := range header {
		h[k] = v
	}
	c := &ws{}
	conn, resp, err := websocket.Dial(ctx, "wss://"+t.cfg.host+"/ws"+query, &websocket.DialOptions{
		HTTPClient: t.client(src, false),
		HTTPHeader: h,
		OnPingReceived: func(context.Context, []byte) bool {
			c.pings.Add(1)
			return true
		},
	})
	if err != nil {
		return nil, resp, err
	}
	c.conn = conn
	return c, resp, nil
}

// send sends one event with a fresh ack number.
func (c *ws) send(ctx context.Context, event string, data any) error {
	c.ack++
	b, err := json.Marshal(map[string]any{"event": event, "data": data, "ack": c.ack})
	if err != nil {
		return err
	}
	return c.conn.Write(ctx, websocket.MessageText, b)
}

// waitFor reads until an event satisfies ok, and returns it. Events of the
// same batch that come after it stay for the next call.
func (c *ws) waitFor(ctx context.Context, ok func(envelope) bool) (envelope, error) {
	for {
		for len(c.pending) > 0 {
			e := c.pending[0]
			c.pending = c.pending[1:]
			if ok(e) {
				return e, nil
			}
		}
		_, msg, err := c.conn.Read(ctx)
		if err != nil {
			return envelope{}, err
		}
		list, err := decodeEvents(msg)
		if err != nil {
			return envelope{}, fmt.Errorf("%q: %v", msg, err)
		}
		c.pending = list
	}
}

func isEvent(name string) func(envelope) bool {
	return func(e envelope) bool { return e.Event == name }
}

// isMessage matches the new_message carrying text.
func isMessage(text string) func(envelope) bool {
	return func(e envelope) bool {
		var m struct{ Text string }
		return e.Event == "new_message" && json.Unmarshal(e.Data, &m) == nil && m.Text == text
	}
}

// isAck matches the answer to ack number n.
func isAck(n int64) func(envelope) bool {
	return func(e envelope) bool { return e.Event == "ack" && e.Ack == n }
}

// ready reads a new session's welcome and its room_joined for general.
func (c *ws) ready(ctx context.Context) error {
	if _, err := c.waitFor(ctx, isEvent("welcome")); err != nil {
		return fmt.Errorf("welcome: %w", err)
	}
	if _, err := c.waitFor(ctx, isEvent("room_joined")); err != nil {
		return fmt.Errorf("room_joined: %w", err)
	}
	return nil
}

func (c *ws) close() { c.conn.Close(websocket.StatusNormalClosure, "") }

// checkRedirect: plain http to the public name is sent to https.
func (t *tester) checkRedirect(ctx context.Context) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+t.cfg.host+"/about", nil)
	resp, err := t.client("127.0.0.1", false).Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusMovedPermanently && resp.StatusCode != http.StatusPermanentRedirect ||
		!strings.HasPrefix(loc, "https://"+t.cfg.host) || !strings.HasSuffix(loc, "/about") {
		return "", fmt.Errorf("got %s Location %q, want 301 or 308 to https://%s/about", resp.Status, loc, t.cfg.host)
	}
	return fmt.Sprintf("%d to %s", resp.StatusCode, loc), nil
}

// checkHealth: the certificate is the proxy's, for the public name.
func (t *tester) checkHealth(ctx context.Context) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", t.url("/healthz"), nil)
	resp, err := t.client("127.0.0.1", true).Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("got %s, want 200", resp.Status)
	}
	return fmt.Sprintf("200 over %s, certificate for %s verified", resp.Proto, t.cfg.host), nil
}

// checkChat: a message sent on one WebSocket arrives on another.
func (t *tester) checkChat(ctx context.Context) (string, error) {
	a, _, err := t.dialWS(ctx, "127.0.0.10", "?username=alice", nil)
	if err != nil {
		return "", fmt.Errorf("dial a: %w", err)
	}
	defer a.close()
	b, _, err := t.dialWS(ctx, "127.0.0.10", "?username=bob", nil)
	if err != nil {
		return "", fmt.Errorf("dial b: %w", err)
	}
	defer b.close()
	for _, c := range []*ws{a, b} {
		if err := c.ready(ctx); err != nil {
			return "", err
		}
	}
	text := "hello through " + t.cfg.name
	if err := a.send(ctx, "send_message", map[string]string{"text": text}); err != nil {
		return "", err
	}
	if _, err := b.waitFor(ctx, isMessage(text)); err != nil {
		return "", fmt.Errorf("b waiting for a's message: %w", err)
	}
	return "bob got alice's message over wss", nil
}

// poller is a long-poll client.
type poller struct {
	t     *tester
	http  *http.Client
	sid   string
	after int64
}

// open is POST /poll without a sid.
func (p *poller) open(ctx context.Context, username string) error {
	req, _ := http.NewRequestWithContext(ctx, "POST", p.t.url("/poll?username="+url.QueryEscape(username)), nil)
	req.Header.Set("Origin", p.t.origin)
	resp, err := p.http.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /poll: %s %s", resp.Status, body)
	}
	var w struct {
		Event string
		Data  struct{ Sid string }
	}
	if err := json.Unmarshal(body, &w); err != nil || w.Event != "welcome" || w.Data.Sid == "" {
		return fmt.Errorf("POST /poll: got %s, want a welcome", body)
	}
	p.sid = w.Data.Sid
	return nil
}

// send is POST /poll?sid with one envelope.
func (p *poller) send(ctx context.Context, event string, data any) error {
	b, _ := json.Marshal(map[string]any{"event": event, "data": data})
	req, _ := http.NewRequestWithContext(ctx, "POST", p.t.url("/poll?sid="+p.sid), strings.NewReader(string(b)))
	req.Header.Set("Origin", p.t.origin)
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("POST /poll?sid: got %s, want 204", resp.Status)
	}
	return nil
}

// get is one GET /poll; it moves the cursor past what it returns.
func (p *poller) get(ctx context.Context) ([]envelope, *http.Response, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", p.t.url(fmt.Sprintf("/poll?sid=%s&after=%d", p.sid, p.after)), nil)
	resp, err := p.http.Do(req)
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, resp, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, resp, fmt.Errorf("GET /poll: %s %s", resp.Status, body)
	}
	list, err := decodeEvents(body)
	if err != nil {
		return nil, resp, fmt.Errorf("GET /poll: %q: %v", body, err)
	}
	for _, e := range list {
		p.after = max(p.after, e.Seq)
	}
	return list, resp, nil
}

// getUntil polls until an event satisfies ok.
func (p *poller) getUntil(ctx context.Context, ok func(envelope) bool) error {
	for ctx.Err() == nil {
		list, _, err := p.get(ctx)
		if err != nil {
			return err
		}
		for _, e := range list {
			if ok(e) {
				return nil
			}
		}
	}
	return ctx.Err()
}

// checkPoll: a long-poll session sends and receives; then, alone in a
// quiet room, a GET waits the whole -poll-timeout through the proxy and
// gets [].
func (t *tester) checkPoll(ctx context.Context) (string, error) {
	p := &poller{t: t, http: t.client("127.0.0.11", true)}
	if err := p.open(ctx, "polly"); err != nil {
		return "", err
	}
	if err := p.getUntil(ctx, isEvent("room_joined")); err != nil {
		return "", fmt.Errorf("waiting for room_joined: %w", err)
	}
	text := "polled through " + t.cfg.name
	if err := p.send(ctx, "send_message", map[string]string{"text": text}); err != nil {
		return "", err
	}
	if err := p.getUntil(ctx, isMessage(text)); err != nil {
		return "", fmt.Errorf("waiting for its own message: %w", err)
	}
	// Out of general, where the other checks' sessions come and go.
	if err := p.send(ctx, "leave_room", map[string]string{"room": "general"}); err != nil {
		return "", err
	}
	if _, _, err := p.get(ctx); err != nil { // the leave's answer, if any
		return "", err
	}
	start := time.Now()
	list, resp, err := p.get(ctx)
	waited := time.Since(start)
	if err != nil {
		return "", fmt.Errorf("the waiting GET after %v: %w", waited.Round(10*time.Millisecond), err)
	}
	if len(list) != 0 || waited < t.cfg.pollTimeout-100*time.Millisecond || waited > t.cfg.pollTimeout+5*time.Second {
		return "", fmt.Errorf("the waiting GET: got %d events after %v, want [] after %v", len(list), waited.Round(10*time.Millisecond), t.cfg.pollTimeout)
	}
	return fmt.Sprintf("events over %s; an empty GET waited %v and got []", resp.Proto, waited.Round(10*time.Millisecond)), nil
}

// checkIdle: a WebSocket that carries nothing but the server's pings for
// longer than the proxy's default read timeout (nginx: 60 s) stays open,
// and a message sent after that still arrives.
func (t *tester) checkIdle(ctx context.Context) (string, error) {
	c, _, err := t.dialWS(ctx, "127.0.0.12", "?username=idler", nil)
	if err != nil {
		return "", err
	}
	defer c.close()
	if err := c.ready(ctx); err != nil {
		return "", err
	}
	// A room of its own, out of general: nothing but pings may come.
	c.send(ctx, "join_room", map[string]string{"room": "quiet"})
	if _, err := c.waitFor(ctx, isAck(c.ack)); err != nil {
		return "", err
	}
	c.send(ctx, "leave_room", map[string]string{"room": "general"})
	if _, err := c.waitFor(ctx, isAck(c.ack)); err != nil {
		return "", err
	}
	// A read must be waiting for the client to answer pings.
	type read struct {
		e   envelope
		err error
		at  time.Duration
	}
	got := make(chan read, 1)
	start := time.Now()
	go func() {
		e, err := c.waitFor(ctx, func(envelope) bool { return true })
		got <- read{e, err, time.Since(start)}
	}()
	select {
	case r := <-got:
		return "", fmt.Errorf("after %v idle: got %q, %v; want nothing", r.at.Round(time.Second), r.e.Event, r.err)
	case <-time.After(t.cfg.idle):
	}

	s, _, err := t.dialWS(ctx, "127.0.0.13", "?username=waker", nil)
	if err != nil {
		return "", err
	}
	defer s.close()
	if err := s.ready(ctx); err != nil {
		return "", err
	}
	s.send(ctx, "join_room", map[string]string{"room": "quiet"})
	if _, err := s.waitFor(ctx, isAck(s.ack)); err != nil {
		return "", err
	}
	text := "still there?"
	s.send(ctx, "send_message", map[string]string{"room": "quiet", "text": text})
	r := <-got // the idler sees the waker join first
	if r.err != nil {
		return "", fmt.Errorf("the idle WebSocket, after %v: %w", r.at.Round(time.Second), r.err)
	}
	if _, err := c.waitFor(ctx, isMessage(text)); err != nil {
		return "", fmt.Errorf("the idle WebSocket: %w", err)
	}
	return fmt.Sprintf("silent for %v (%d server pings answered), then got a message", t.cfg.idle, c.pings.Load()), nil
}

// postForm posts the no-JavaScript form from src, with the given headers.
func (t *tester) postForm(ctx context.Context, src string, header http.Header, username, text string) (*http.Response, error) {
	form := url.Values{"username": {username}, "message": {text}}
	req, _ := http.NewRequestWithContext(ctx, "POST", t.url("/send_message"), strings.NewReader(form.Encode()))
	req.Header = header.Clone()
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := t.client(src, true).Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// checkForm: the form from the site's own page is stored and redirected.
func (t *tester) checkForm(ctx context.Context) (string, error) {
	text := "form through " + t.cfg.name
	resp, err := t.postForm(ctx, "127.0.0.14", http.Header{"Origin": {t.origin}}, "former", text)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		return "", fmt.Errorf("got %s to %q, want 303 to /", resp.Status, resp.Header.Get("Location"))
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", t.url("/messages?room=general"), nil)
	mresp, err := t.client("127.0.0.14", true).Do(req)
	if err != nil {
		return "", err
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !strings.Contains(string(body), text) {
		return "", fmt.Errorf("GET /messages does not have the message: %s", body)
	}
	return "303 to /, and GET /messages has it", nil
}

// checkCrossSitePost: another site's form may not post as our users, nor
// open a long-poll session.
func (t *tester) checkCrossSitePost(ctx context.Context) (string, error) {
	evil := http.Header{"Origin": {"https://evil.example"}}
	resp, err := t.postForm(ctx, "127.0.0.15", evil, "mallory", "from evil")
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusForbidden {
		return "", fmt.Errorf("POST /send_message: got %s, want 403", resp.Status)
	}
	req, _ := http.NewRequestWithContext(ctx, "POST", t.url("/poll?username=mallory"), nil)
	req.Header = evil
	presp, err := t.client("127.0.0.15", true).Do(req)
	if err != nil {
		return "", err
	}
	presp.Body.Close()
	if presp.StatusCode != http.StatusForbidden {
		return "", fmt.Errorf("POST /poll: got %s, want 403", presp.Status)
	}
	return "POST /send_message and POST /poll from https://evil.example: 403", nil
}

// checkCrossSiteWS: another site's page may not open a WebSocket.
func (t *tester) checkCrossSiteWS(ctx context.Context) (string, error) {
	c, resp, err := t.dialWS(ctx, "127.0.0.16", "", http.Header{"Origin": {"https://evil.example"}})
	if err == nil {
		c.close()
		return "", errors.New("the handshake succeeded")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		return "", fmt.Errorf("got %v, want 403", err)
	}
	return "Origin https://evil.example: 403", nil
}

// checkPerAddress: with -sessions-per-ip 2, sessions count per address the
// proxy saw (the client's socket: 127.0.0.2, 127.0.0.3, …), and what a
// client writes in X-Forwarded-For itself counts for nothing.
func (t *tester) checkPerAddress(ctx context.Context) (string, error) {
	var open []*ws
	defer func() {
		for _, c := range open {
			c.close()
		}
	}()
	// session opens a WebSocket session from src with a made-up
	// X-Forwarded-For, and reports how it was refused, if it was.
	session := func(src, xff string) error {
		c, _, err := t.dialWS(ctx, src, "", http.Header{"X-Forwarded-For": {xff}})
		if err != nil {
			return err
		}
		open = append(open, c)
		return c.ready(ctx)
	}
	for _, s := range []struct{ src, xff string }{
		{"127.0.0.2", "203.0.113.1"},
		{"127.0.0.2", "203.0.113.2"},
		{"127.0.0.3", "203.0.113.1"},
	} {
		if err := session(s.src, s.xff); err != nil {
			return "", fmt.Errorf("from %s with X-Forwarded-For %s: %w", s.src, s.xff, err)
		}
	}
	// A third from 127.0.0.2 is refused, whatever it claims to be.
	err := session("127.0.0.2", "203.0.113.3")
	if websocket.CloseStatus(err) != websocket.StatusTryAgainLater {
		return "", fmt.Errorf("a third WebSocket from 127.0.0.2 (X-Forwarded-For 203.0.113.3): got %v, want close 1013 (server_busy)", err)
	}
	req, _ := http.NewRequestWithContext(ctx, "POST", t.url("/poll?username=third"), nil)
	req.Header.Set("Origin", t.origin)
	req.Header.Set("X-Forwarded-For", "198.51.100.7")
	resp, err := t.client("127.0.0.2", true).Do(req)
	if err != nil {
		return "", err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `"server_busy"`) {
		return "", fmt.Errorf("a third long-poll session from 127.0.0.2 (X-Forwarded-For 198.51.100.7): got %s %s, want 503 server_busy", resp.Status, body)
	}
	// Other clients are not held back: 127.0.0.3 has room for one more,
	// and 127.0.0.4 for its first, though both claim addresses that
	// already have two sessions.
	for _, s := range []struct{ src, xff string }{
		{"127.0.0.3", "203.0.113.2"},
		{"127.0.0.4", "203.0.113.1"},
	} {
		if err := session(s.src, s.xff); err != nil {
			return "", fmt.Errorf("from %s with X-Forwarded-For %s: %w", s.src, s.xff, err)
		}
	}
	return "2+2 sessions from 127.0.0.2 and .3 (X-Forwarded-For .1 and .2) and 1 from .4 open; a third from 127.0.0.2 refused (1013, 503 server_busy) despite a spoofed X-Forwarded-For", nil
}

// checkFormRate: the form's rate bucket (-burst 5 on the test's server) is
// the forwarded address's: one client that empties it does not stop
// another.
func (t *tester) checkFormRate(ctx context.Context) (string, error) {
	same := http.Header{"Origin": {t.origin}}
	n := 0
	for ; ; n++ {
		if n == 30 {
			return "", errors.New("30 form posts from 127.0.0.5 were all accepted: no rate limit")
		}
		// A new made-up X-Forwarded-For each time: it must not buy a new bucket.
		h := same.Clone()
		h.Set("X-Forwarded-For", fmt.Sprintf("203.0.113.%d", 100+n))
		resp, err := t.postForm(ctx, "127.0.0.5", h, "rater", fmt.Sprint("rate ", n))
		if err != nil {
			return "", err
		}
		if resp.StatusCode == http.StatusTooManyRequests {
			break
		}
		if resp.StatusCode != http.StatusSeeOther {
			return "", fmt.Errorf("post %d: got %s, want 303 or 429", n+1, resp.Status)
		}
	}
	resp, err := t.postForm(ctx, "127.0.0.6", same, "rater", "another client")
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusSeeOther {
		return "", fmt.Errorf("from 127.0.0.6 after 127.0.0.5 was limited: got %s, want 303", resp.Status)
	}
	return fmt.Sprintf("127.0.0.5 limited (429) after %d posts with changing X-Forwarded-For; 127.0.0.6 still 303", n), nil
}
