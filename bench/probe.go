// The newcomer probe: while the clients load the server, is it still there
// for someone new? A server past its core must still answer a health check
// and take a new connection, or its operator's load balancer takes it out
// and its users cannot get in.
//
// From the start of the send window to the end of the drain, every -probe
// (or at once after a probe that took longer), the probe times one GET of
// the health page and one new WebSocket, one after the other, each on a
// new connection, as a newcomer or a load balancer would. A probe still
// waiting when the drain ends is cut short, and reported as such.
//
// What it costs the server: two connections every half second, and for
// this server a new session each time. That user joins general and is
// announced to its members, as every new user is, and its session stays
// for the grace period after the probe closes: in a one-room run it is
// then sent the room's messages until it is dropped as too slow, like any
// user who closed a tab. In the 1,000-client room, that is under 1% more
// events.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// probeWait bounds one probe: a server that takes longer has failed it.
// (The run may end first: the probe is then cut short.)
const probeWait = 10 * time.Second

// probe is the newcomer probe of one run.
type probe struct {
	r     *loadRun
	every time.Duration
	hc    *http.Client // a new connection for each request

	// Written by run only; read once it has returned.
	health, connect histogram      // how long each answered one took, ns
	healthTried     int            // probes of the health page that ended (answered or failed)
	connectTried    int            // the same, of a new WebSocket
	cut             int            // probes cut short by the end of the run
	failed          map[string]int // why probes failed ("health: HTTP 503"), and how often
}

func newProbe(r *loadRun, every time.Duration) *probe {
	d := &net.Dialer{Timeout: probeWait, Control: onlyLoopback}
	return &probe{
		r: r, every: every, failed: map[string]int{},
		hc: &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}},
	}
}

// run probes until ctx ends: the health page, then a new WebSocket. With
// no interval (-probe 0) it does nothing.
func (p *probe) run(ctx context.Context) {
	if p.every <= 0 {
		return
	}
	tick := time.NewTicker(p.every)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !p.count(ctx, "health", &p.healthTried, func() error { return p.timeHealth(ctx) }) ||
			!p.count(ctx, "connect", &p.connectTried, func() error { return p.timeConnect(ctx, n) }) {
			return
		}
	}
}

// count runs one probe and counts it as tried, and as failed with why. A
// probe the run's end interrupts is cut short instead: neither answered nor
// failed. It reports whether the run goes on.
func (p *probe) count(ctx context.Context, what string, tried *int, try func() error) bool {
	err := try()
	if err != nil && ctx.Err() != nil {
		p.cut++
		return false
	}
	if err != nil {
		p.failed[what+": "+probeError(err)]++
	}
	*tried++
	return ctx.Err() == nil
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

// timeHealth times one GET of the health page, from the dial to the whole
// answer.
func (p *probe) timeHealth(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, probeWait)
	defer cancel()
	path, want := p.healthPage()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.r.nw.base.String()+path, nil)
	began := time.Now()
	resp, err := p.hc.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	if err == nil {
		p.health.record(time.Since(began).Nanoseconds())
	}
	return err
}

// timeConnect opens the n-th new WebSocket, and times it from the dial to
// the server's first answer: this server's welcome (a new session),
// Socket.IO's open packet, Centrifugo's reply to connect. Gorilla's chat
// says nothing first: its handshake is the answer. The probe then drops
// the connection: waiting for the close handshake would only delay the
// next probe, and the server keeps the session for its grace period
// either way.
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
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: p.hc})
	if err != nil {
		return err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(maxMessage)
	if p.r.o.peer == "centrifugo" {
		if err := conn.Write(ctx, websocket.MessageText, []byte(`{"id":1,"connect":{}}`)); err != nil {
			return err
		}
	}
	if first != nil {
		_, msg, err := conn.Read(ctx) // the context's end drops the connection: it is done anyway
		if err != nil {
			return err
		}
		if !bytes.HasPrefix(msg, first) {
			return fmt.Errorf("first message %.40q", msg)
		}
	}
	p.connect.record(time.Since(began).Nanoseconds())
	return nil
}

// report is the probe's lines of the summary, if it probed.
func (p *probe) report(out io.Writer) {
	if p.every <= 0 {
		return
	}
	path, _ := p.healthPage()
	fmt.Fprintf(out, "newcomers       every %v, GET %s: %d of %d answered%s\n",
		p.every, path, p.health.total(), p.healthTried, p.health.brief())
	fmt.Fprintf(out, "                a new WebSocket: %d of %d answered%s\n",
		p.connect.total(), p.connectTried, p.connect.brief())
	if p.cut > 0 {
		fmt.Fprintf(out, "                %d cut short by the end of the run\n", p.cut)
	}
	whys := make([]string, 0, len(p.failed))
	for why := range p.failed {
		whys = append(whys, why)
	}
	slices.Sort(whys)
	for _, why := range whys {
		fmt.Fprintf(out, "                failed %d×: %s\n", p.failed[why], why)
	}
}

// probeError is why a probe failed, alike for every probe (errorKind): its
// time ran out, or what the server or the network said.
func probeError(err error) string {
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
		return fmt.Sprintf("no answer within %v", probeWait)
	}
	return errorKind(err)
}
