package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// startRun runs the real program, run, with args and returns its base URL,
// a channel that gets run's result, and one that gets each line it logs
// (as many as the channel holds).
func startRun(t *testing.T, ctx context.Context, args ...string) (string, chan error, chan string) {
	t.Helper()
	out, w := io.Pipe()
	result := make(chan error, 1)
	go func() {
		err := run(ctx, args, w)
		w.Close()
		result <- err
	}()
	addr := make(chan string, 1)
	lines := make(chan string, 100)
	go func() {
		re := regexp.MustCompile(`addr=(\S+)`)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil && strings.Contains(sc.Text(), "listening") {
				addr <- m[1]
			}
			select {
			case lines <- sc.Text():
			default: // full: run must never wait for the test
			}
		}
	}()
	select {
	case a := <-addr:
		return "http://" + a, result, lines
	case err := <-result:
		t.Fatalf("run ended before listening: %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("run did not start listening")
	}
	panic("unreachable")
}

// TestShutdown: a cancelled context closes every WebSocket with 1001,
// answers a waiting long-poll at once, and run returns within 5 s.
func TestShutdown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, result, logged := startRun(t, ctx, "-addr", "127.0.0.1:0", "-poll-timeout", "1m", "-v")

	dialCtx, cancelDial := context.WithTimeout(context.Background(), waitTimeout)
	defer cancelDial()
	conn, _, err := websocket.Dial(dialCtx, "ws"+strings.TrimPrefix(base, "http")+"/ws?username=alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.Read(dialCtx) // welcome
	conn.Read(dialCtx) // room_joined

	// A long-poll that would otherwise wait a minute.
	resp, err := http.Post(base+"/poll?username=bob", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	var welcome struct{ Data struct{ SID string } }
	json.NewDecoder(resp.Body).Decode(&welcome)
	resp.Body.Close()
	first, _ := http.Get(base + "/poll?after=0&sid=" + welcome.Data.SID) // room_joined, at once
	first.Body.Close()
	polled := make(chan int, 1)
	go func() {
		resp, err := http.Get(base + "/poll?after=1&sid=" + welcome.Data.SID)
		if err != nil {
			polled <- 0
			return
		}
		resp.Body.Close()
		polled <- resp.StatusCode
	}()
	for waiting := false; !waiting; { // until the GET waits in the server
		select {
		case line := <-logged:
			waiting = strings.Contains(line, "long-poll waiting") && strings.Contains(line, "after=1")
		case <-time.After(waitTimeout):
			t.Fatal("the long-poll GET is not waiting")
		}
	}

	start := time.Now()
	cancel()
	for err == nil { // bob's user_joined, then the close
		_, _, err = conn.Read(dialCtx)
	}
	if code := websocket.CloseStatus(err); code != websocket.StatusGoingAway {
		t.Errorf("WebSocket: got %v, want close 1001", err)
	}
	select {
	case code := <-polled:
		if code != http.StatusOK {
			t.Errorf("waiting long-poll: got status %d, want 200", code)
		}
	case <-time.After(5 * time.Second):
		t.Error("the waiting long-poll was not answered")
	}
	select {
	case err := <-result:
		if err != nil {
			t.Errorf("run: %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("shutdown took %v, want under 5 s", d)
		}
	case <-time.After(6 * time.Second):
		t.Fatal("run did not return within 5 s of the cancel")
	}
}

// TestPortEnvironment: PORT, where set, makes the default address :$PORT
// (PROTOCOL.md section 8), and the server answers there. (t.Setenv: not
// parallel.)
func TestPortEnvironment(t *testing.T) {
	// A free port: listen on any, and let go of it for run to take.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	t.Setenv("PORT", port)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, result, _ := startRun(t, ctx) // no -addr
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	host, got, _ := net.SplitHostPort(u.Host)
	if ip := net.ParseIP(host); got != port || ip == nil || !ip.IsUnspecified() {
		t.Errorf("listening on %s, want :%s (every interface, port %s)", u.Host, port, port)
	}
	hc := &http.Client{Transport: &http.Transport{}}
	if a := mustRequest(t, hc, "GET", "http://127.0.0.1:"+port+"/healthz", nil, nil); a.status != http.StatusOK {
		t.Errorf("GET /healthz on port %s: got %s, want 200", port, a)
	}
	hc.CloseIdleConnections()

	cancel()
	select {
	case err := <-result:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(6 * time.Second):
		t.Fatal("run did not return within 5 s of the cancel")
	}
}

func TestRunFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-nope"}, {"-outbox", "0"}, {"-grace", "0s"}, {"-poll-timeout", "0s"}, {"stray"}, {"-addr", "127.0.0.1:notaport"},
		{"-rate", "NaN"}, {"-rate", "+Inf"}, {"-rate", "0"}, {"-burst", "0"}, {"-origins", "example.com,["}, {"-trust-proxy", "bad"}} {
		// Flags taken by mistake would start a server: on a free port, and
		// only for a second, so that the test fails instead of hanging.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := run(ctx, append([]string{"-addr", "127.0.0.1:0"}, args...), io.Discard); err == nil {
			t.Errorf("run %q: got no error", args)
		}
		cancel()
	}
	if err := run(context.Background(), []string{"-h"}, io.Discard); err != nil {
		t.Errorf("run -h: got %v, want the usage and no error", err)
	}
}
