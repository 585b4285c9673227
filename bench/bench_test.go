package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The bench against the real server: built from the parent directory,
// started on a free port, measured with small runs. What is checked is what
// the README's figures rest on: every delivery counted, none lost, none in
// the wrong room, and the newcomer probe answered.

// startServer builds the chat server and starts it with limits raised for
// a benchmark. It returns its URL and its process id; the test's end stops
// it.
func startServer(t *testing.T) (string, int) {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build the server with: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "chat")
	if out, err := exec.Command(goTool, "build", "-o", bin, "..").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0", "-rate", "100000", "-burst", "100000",
		"-max-sessions", "100000", "-sessions-per-ip", "100000")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	listening := make(chan string, 1)
	go func() {
		line := regexp.MustCompile(`msg="chat server listening" addr=(\S+)`)
		for sc := bufio.NewScanner(stdout); sc.Scan(); {
			if m := line.FindStringSubmatch(sc.Text()); m != nil {
				listening <- m[1]
			}
		}
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	select {
	case addr := <-listening:
		return "http://" + addr, cmd.Process.Pid
	case <-exited:
		t.Fatal("the server exited before it listened")
	case <-time.After(30 * time.Second):
		t.Fatal("the server did not listen within 30 s")
	}
	return "", 0
}

// runBench runs the bench with args and returns its report.
func runBench(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out strings.Builder
	if err := run(ctx, args, &out); err != nil {
		t.Fatalf("bench %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// wantLines fails the test for each pattern that no line of report matches.
func wantLines(t *testing.T, report string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(`(?m)` + p).MatchString(report) {
			t.Errorf("no line matches %q in the report:\n%s", p, report)
		}
	}
}

// TestMain fails the run when goroutines outlive the tests: the bench's
// clients, its probe and its HTTP connections all end with the run.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if runtime.NumGoroutine() > before {
			buf := make([]byte, 1<<20)
			fmt.Fprintf(os.Stderr, "goroutines left behind after the tests:\n%s\n", buf[:runtime.Stack(buf, true)])
			code = 1
		}
	}
	os.Exit(code)
}

// TestBenchAgainstServer runs the bench against the real server, in one
// room and in several, with the probe every 100 ms.
func TestBenchAgainstServer(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the bench reads the server's CPU and memory from /proc")
	}
	if testing.Short() {
		t.Skip("builds and runs the server: not in -short")
	}
	base, pid := startServer(t)
	common := []string{"-url", base, "-server-pid", strconv.Itoa(pid), "-duration", "1500ms", "-drain", "3s", "-probe", "100ms"}

	t.Run("OneRoom", func(t *testing.T) {
		report := runBench(t, append(common, "-clients", "20", "-senders", "2", "-rate", "40")...)
		wantLines(t, report,
			`^connected +20 of 20 clients`,
			`^deliveries +expected 1200 \(accepted × 20 receivers\), received 1200$`,
			`^loss +0 \(0\.000%, 0 clients missed some\), duplicates 0, from another room 0$`,
			`^latency +p50 `,
			`^CPU +generator [0-9]+% .*, server [0-9]+%`,
		)
		// Every probe that ended was answered, and there were some: a
		// dozen or more in 1.5 s, unless the machine stalls for seconds.
		for _, what := range []string{`^newcomers +every 100ms, GET /healthz`, `^ +a new WebSocket`} {
			m := regexp.MustCompile(`(?m)` + what + `: ([0-9]+) of ([0-9]+) answered, p50 [0-9.]+ms, max [0-9.]+ms$`).FindStringSubmatch(report)
			if m == nil {
				m = []string{"", "0", "-"}
			}
			if n, _ := strconv.Atoi(m[1]); m[1] != m[2] || n < 3 {
				t.Errorf("want %s: N of N answered, N at least 3; the report:\n%s", what, report)
			}
		}
		if strings.Contains(report, "failed") {
			t.Errorf("a probe failed:\n%s", report)
		}
	})
	t.Run("Rooms", func(t *testing.T) {
		report := runBench(t, append(common, "-clients", "20", "-rooms", "5", "-senders", "5", "-rate", "50", "-room", "r")...)
		wantLines(t, report,
			`^bench: chat over websocket, 20 clients in 5 rooms r-0 … r-4`,
			`^deliveries +expected 300 \(each accepted message × its room's members: 20 clients in 5 rooms\), received 300$`,
			`^loss +0 \(0\.000%, 0 clients missed some\), duplicates 0, from another room 0$`,
		)
	})
}

// TestProbeFailures: a server whose health page fails and that has no
// WebSocket endpoint shows as failed probes, each counted once under one
// reason, not as a hung or a silent run.
func TestProbeFailures(t *testing.T) {
	t.Parallel()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer ts.Close()
	base, _ := url.Parse(ts.URL)
	nw, err := newNetwork(base, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	p := newProbe(&loadRun{o: &options{peer: "chat"}, nw: nw}, 20*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	p.run(ctx)
	p.hc.CloseIdleConnections()
	var out strings.Builder
	p.report(&out)
	report := out.String()
	health := regexp.MustCompile(`(?m)^newcomers +every 20ms, GET /healthz: 0 of ([0-9]+) answered$`).FindStringSubmatch(report)
	connect := regexp.MustCompile(`(?m)^ +a new WebSocket: 0 of ([0-9]+) answered$`).FindStringSubmatch(report)
	if health == nil || connect == nil || health[1] == "0" || connect[1] == "0" {
		t.Fatalf("want some probes of each, none answered; the report:\n%s", report)
	}
	wantLines(t, report,
		`^ +failed `+health[1]+`×: health: HTTP 503$`,
		`^ +failed `+connect[1]+`×: connect: .*status code 101 but got 503$`,
	)
	if n := len(regexp.MustCompile(`(?m)^ +failed [0-9]+×`).FindAllString(report, -1)); n != 2 {
		t.Errorf("want the failures under two reasons, got %d lines:\n%s", n, report)
	}
}
