// The newcomer probe: while the clients load the server, is it still there
// for someone new? A server past its core must still answer a health check
// and take a new connection, or its operator's load balancer takes it out and
// its users cannot get in. Every probeEvery (or, after a slower probe, at
// once), from the start of the send window to the end of the drain, the
// probe times one GET of the health page and one new WebSocket, one after
// the other, each within probeWait.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
)

const (
	probeEvery = 500 * time.Millisecond // a few per run, so that the probe adds no load of its own
	probeWait  = 10 * time.Second       // longer than that is a failure
)

// probe is the newcomer probe of one run: its timings and its failures.
type probe struct {
	r               *loadRun
	health, connect histogram // ns, of those that succeeded
	tries           int
	failed          map[string]int // what went wrong, by kind
}

// run probes until ctx ends.
func (p *probe) run(ctx context.Context) {
	p.failed = map[string]int{}
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p.tries++
		if err := p.timeHealth(ctx); err != nil && ctx.Err() == nil {
			p.failed["health: "+err.Error()]++
		}
		if err := p.timeConnect(ctx, n); err != nil && ctx.Err() == nil {
			p.failed["connect: "+err.Error()]++
		}
	}
}

// healthPage is what the probe GETs, and the status it wants: this
// server's /healthz; Centrifugo's /health (bench/peer.sh enables it);
// Socket.IO's long-polling handshake, its only page; gorilla's chat serves
// its page from a file the peer's build has not got, and answers 404 at once.
func (p *probe) healthPage() (path string, status int) {
	switch p.r.o.peer {
	case "gorilla":
		return "/", http.StatusNotFound
	case "socketio":
		return "/socket.io/?EIO=4&transport=polling", http.StatusOK
	case "centrifugo":
		return "/health", http.StatusOK
	}
	return "/healthz", http.StatusOK
}

// timeHealth GETs the health page once.
func (p *probe) timeHealth(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, probeWait)
	defer cancel()
	path, want := p.healthPage()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.r.nw.base.String()+path, nil)
	began := time.Now()
	resp, err := p.r.nw.clients[0].Do(req)
	if err != nil {
		return shortError(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	p.health.record(time.Since(began).Nanoseconds())
	return nil
}

// timeConnect opens one new WebSocket, and times it from the dial to the
// server's first answer: this server's welcome (a new session; the probe
// user is in general, as every new user is), Socket.IO's open packet,
// Centrifugo's reply to connect. Gorilla's chat says nothing first: its
// handshake is the answer. Then the probe closes it.
func (p *probe) timeConnect(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, probeWait)
	defer cancel()
	nw := p.r.nw
	u := nw.url("/ws", "username", "probe-"+strconv.Itoa(n))
	first := []byte(`{"event":"welcome"`)
	switch p.r.o.peer {
	case "gorilla":
		u, first = nw.url("/ws"), nil
	case "socketio":
		u, first = nw.url("/socket.io/", "EIO", "4", "transport", "websocket"), []byte("0{")
	case "centrifugo":
		u, first = nw.url("/connection/websocket"), []byte(`{"id":1,`)
	}
	began := time.Now()
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: nw.clients[0]})
	if err != nil {
		return shortError(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(maxMessage)
	if p.r.o.peer == "centrifugo" {
		if err := conn.Write(ctx, websocket.MessageText, []byte(`{"id":1,"connect":{}}`)); err != nil {
			return shortError(err)
		}
	}
	if first != nil {
		_, msg, err := conn.Read(ctx) // the context's end drops the connection: it is done anyway
		if err != nil {
			return shortError(err)
		}
		if !bytes.HasPrefix(msg, first) {
			return fmt.Errorf("first message %.40q", msg)
		}
	}
	p.connect.record(time.Since(began).Nanoseconds())
	conn.Close(websocket.StatusNormalClosure, "probe done")
	return nil
}

// report is the probe's lines of the summary.
func (p *probe) report(out io.Writer) {
	path, _ := p.healthPage()
	fmt.Fprintf(out, "newcomers       every %v, GET %s: %d of %d answered%s\n",
		probeEvery, path, count(&p.health), p.tries, timings(&p.health))
	fmt.Fprintf(out, "                a new WebSocket: %d of %d answered%s\n",
		count(&p.connect), p.tries, timings(&p.connect))
	for why, n := range p.failed {
		fmt.Fprintf(out, "                failed %d×: %s\n", n, why)
	}
}

// timings is ", p50 …, max …" of h, or nothing if it is empty. (A few
// dozen samples have no p99 worth the name.)
func timings(h *histogram) string {
	total := count(h)
	if total == 0 {
		return ""
	}
	var seen int64
	b := 0
	for ; seen+h.counts[b].Load() < (total+1)/2; b++ {
		seen += h.counts[b].Load()
	}
	return fmt.Sprintf(", p50 %.2fms, max %.2fms", math.Expm1((float64(b)+0.5)/50)/1000, float64(h.max.Load())/1e6)
}

// count is how many samples h holds.
func count(h *histogram) (n int64) {
	for b := range h.counts {
		n += h.counts[b].Load()
	}
	return n
}

// shortError is err without the URL that net/http and coder/websocket
// put in front of it, which the report says once already.
func shortError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
		return fmt.Errorf("no answer within %v", probeWait)
	}
	return err
}
