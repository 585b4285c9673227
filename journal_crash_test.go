package main

// Crash tests of -data (PROTOCOL.md section 9) against the real program:
// the test builds the binary once, runs it as a child process on a
// directory, and kills it with SIGKILL while clients send acknowledged
// messages with cids, then starts it again on the same directory. What a
// client was told (an ack) must survive; what it was not told may be lost,
// but never stored twice: the client sends it again with the same cid.
//
// The journal's own tests (journal_test.go) call openJournal in process;
// these go through the flags, the process's exit code and stderr, the
// listening log line, and the wire, as an operator and a client see them.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// procTimeout bounds every wait on a child process (its start, its exit)
// and on a client of it. It is longer than waitTimeout: a process start on
// a loaded machine is slow, and only a failing test waits this long.
const procTimeout = 30 * time.Second

// TestCrash builds the server once and runs each crash test on it, the
// start-up time alone, the others in parallel; the binary lives in this
// test's temporary directory, which outlives its subtests. Not parallel
// with other tests: the build and the child processes would take the CPU
// from tests that time their clients.
func TestCrash(t *testing.T) {
	bin := buildChat(t)
	t.Run("StartupTime", func(t *testing.T) { testStartupTime(t, bin) }) // alone: it measures
	t.Run("KillRounds", func(t *testing.T) { t.Parallel(); testKillRounds(t, bin) })
	t.Run("TornTail", func(t *testing.T) { t.Parallel(); testTornTail(t, bin) })
	t.Run("DamagedMiddle", func(t *testing.T) { t.Parallel(); testDamagedMiddle(t, bin) })
	t.Run("SecondServer", func(t *testing.T) { t.Parallel(); testSecondServer(t, bin) })
}

// buildChat builds this package's program into a temporary directory.
func buildChat(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go") // go test puts its own first on PATH
	if err != nil {
		t.Fatalf("no go command to build the server with: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "chat")
	start := time.Now()
	out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built the server in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// chatProc is the server running as a child process.
type chatProc struct {
	cmd       *exec.Cmd
	base      string        // http://host:port, once it listens
	took      time.Duration // from its start to its listening line
	listening chan string   // its address, once it logs it
	exited    chan struct{} // closed once it has exited and been waited for
	hc        *http.Client  // its own connections, closed with it

	// Read only once exited is closed.
	err    error        // from Wait: nil for exit code 0
	stderr bytes.Buffer // what main prints before exiting 1
	stdout []string     // its log lines
}

// listenLine is the log line of a server ready for clients.
var listenLine = regexp.MustCompile(`msg="chat server listening" addr=(\S+)`)

// launch starts the server with args and reads its log. When the test
// ends, the process is killed if it still runs, and waited for.
func launch(t *testing.T, bin string, args ...string) *chatProc {
	t.Helper()
	p := &chatProc{
		cmd:       exec.Command(bin, args...),
		listening: make(chan string, 1),
		exited:    make(chan struct{}),
		hc:        &http.Client{Transport: &http.Transport{}, Timeout: procTimeout},
	}
	p.cmd.Stderr = &p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { // the one reader of stdout, and the one to Wait
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.stdout = append(p.stdout, sc.Text())
			if m := listenLine.FindStringSubmatch(sc.Text()); m != nil && p.took == 0 {
				p.took = time.Since(start)
				p.listening <- m[1]
			}
		}
		io.Copy(io.Discard, stdout) // a line too long for the scanner
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill() // an error once it has exited: nothing to do
		select {
		case <-p.exited:
		case <-time.After(procTimeout):
			t.Errorf("pid %d: not ended %v after SIGKILL", p.cmd.Process.Pid, procTimeout)
		}
		p.hc.CloseIdleConnections()
	})
	return p
}

// startChat starts the server on dir, with extra flags, and waits until it
// listens.
func startChat(t *testing.T, bin, dir string, args ...string) *chatProc {
	t.Helper()
	p := launch(t, bin, append([]string{"-addr", "127.0.0.1:0", "-data", dir}, args...)...)
	select {
	case addr := <-p.listening:
		p.base = "http://" + addr
	case <-p.exited:
		t.Fatalf("the server exited before listening: %v\nstderr: %s", p.err, p.stderr.String())
	case <-time.After(procTimeout):
		t.Fatalf("the server did not listen within %v", procTimeout)
	}
	return p
}

// wait waits for the process to exit.
func (p *chatProc) wait(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(procTimeout):
		t.Fatalf("pid %d: still running after %v", p.cmd.Process.Pid, procTimeout)
	}
}

// kill ends the server as a crash would: SIGKILL, nothing flushed, no
// goodbye to anyone.
func (p *chatProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	p.wait(t)
}

// stop ends the server as an operator does, with SIGTERM, and wants exit
// code 0.
func (p *chatProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	p.wait(t)
	if p.err != nil {
		t.Fatalf("after SIGTERM: got %v, want exit code 0\nstderr: %s", p.err, p.stderr.String())
	}
}

// failToStart runs the server on dir and wants it to exit with an error
// before it listens. It returns what it printed on stderr.
func failToStart(t *testing.T, bin, dir string) string {
	t.Helper()
	p := launch(t, bin, "-addr", "127.0.0.1:0", "-data", dir)
	p.wait(t)
	if p.took != 0 {
		t.Errorf("the server listened; log: %q", p.stdout)
	}
	var exit *exec.ExitError
	if !errors.As(p.err, &exit) || exit.ExitCode() == 0 {
		t.Errorf("exit: got %v, want a non-zero exit code", p.err)
	}
	return p.stderr.String()
}

// history returns GET /messages?room=room.
func (p *chatProc) history(t *testing.T, room string) []message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), procTimeout)
	defer cancel()
	a, err := doRequest(ctx, p.hc, "GET", p.base+"/messages?room="+url.QueryEscape(room), nil, nil)
	if err != nil {
		t.Fatalf("GET /messages: %v", err)
	}
	var list []message
	if err := json.Unmarshal(a.body, &list); a.status != http.StatusOK || err != nil {
		t.Fatalf("GET /messages?room=%s: got %s (%v)", room, a, err)
	}
	return list
}

// sent is a message a crash test's client sends, with what it knows of it.
type sent struct {
	user, room, cid, text string

	sends  int      // how many times it was sent
	acked  bool     // an ack said it is stored: it must survive any crash
	stored *message // as stored: from an ack or a new_message, or found in the history after a crash
	answer *sendAnswer
}

// talk opens a WebSocket session called user on the server at base, joins
// the rooms of msgs, and sends msgs in order with their cids and ack
// numbers, keeping up to window of them unanswered. Each answer goes into
// its message's answer field, and answered is called; heard is called with
// every new_message the session gets. It returns nil once every message is
// answered, or the error that ended the connection (a killed server). It
// never calls t: crash tests run it in goroutines.
func talk(ctx context.Context, base, user string, msgs []*sent, window int, answered func(), heard func(message)) error {
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/ws?username="+url.QueryEscape(user), nil)
	if err != nil {
		return err
	}
	conn.SetReadLimit(-1)

	// The reader passes on the welcome and the acks, and ends when the
	// connection does.
	events := make(chan event, 2*window)
	readErr := make(chan error, 1)
	go func() {
		defer close(events)
		for {
			_, b, err := conn.Read(ctx)
			if err != nil {
				readErr <- err
				return
			}
			var list []event
			if len(b) > 0 && b[0] != '[' {
				b = slices.Concat([]byte("["), b, []byte("]"))
			}
			if err := json.Unmarshal(b, &list); err != nil {
				readErr <- fmt.Errorf("bad JSON from the server: %q", b)
				return
			}
			for _, e := range list {
				if e.Event == "new_message" {
					var m message
					json.Unmarshal(e.Data, &m)
					heard(m)
				}
				if e.Event == "welcome" || e.Event == "ack" {
					select {
					case events <- e:
					case <-ctx.Done():
					}
				}
			}
		}
	}()
	defer func() { // whatever happens, the reader has ended when talk returns
		conn.CloseNow()
		for range events {
		}
	}()
	ended := func() error { // the connection is gone: why
		for range events {
		}
		return <-readErr
	}
	send := func(name string, data any, ack int64) error {
		b, _ := json.Marshal(map[string]any{"event": name, "data": data, "ack": ack})
		return conn.Write(ctx, websocket.MessageText, b)
	}

	e, ok := <-events
	if !ok {
		return ended()
	}
	var w struct{ Username string }
	json.Unmarshal(e.Data, &w)
	if e.Event != "welcome" || w.Username != user { // a guest name would send as someone else
		return fmt.Errorf("got %s, want the welcome of %s", e, user)
	}
	var ack int64
	joins, joined := map[int64]string{}, map[string]bool{defaultRoomName: true}
	for _, m := range msgs {
		if !joined[m.room] {
			joined[m.room] = true
			ack++
			joins[ack] = m.room
			if err := send("join_room", map[string]string{"room": m.room}, ack); err != nil {
				return ended()
			}
		}
	}
	inFlight := map[int64]*sent{}
	next, done := 0, 0
	for len(joins) > 0 || done < len(msgs) {
		for len(joins) == 0 && next < len(msgs) && len(inFlight) < window {
			m := msgs[next]
			ack++
			inFlight[ack] = m
			next++
			m.sends++
			if err := send("send_message", map[string]string{"room": m.room, "text": m.text, "cid": m.cid}, ack); err != nil {
				return ended()
			}
		}
		e, ok := <-events
		if !ok {
			return ended()
		}
		if room, ok := joins[e.Ack]; ok {
			if !strings.Contains(string(e.Data), `"ok":true`) {
				return fmt.Errorf("join_room %s: got %s", room, e)
			}
			delete(joins, e.Ack)
			continue
		}
		m := inFlight[e.Ack]
		if m == nil {
			return fmt.Errorf("got %s, which answers nothing in flight", e)
		}
		delete(inFlight, e.Ack)
		var a sendAnswer
		if err := json.Unmarshal(e.Data, &a); err != nil {
			return fmt.Errorf("ack %s: %v", e, err)
		}
		m.answer = &a
		done++
		answered()
	}
	conn.Close(websocket.StatusNormalClosure, "")
	ended()
	return nil
}

// talkAll runs talk for each user's messages at once and waits for them.
// answered and heard may be nil.
func talkAll(base string, msgs map[string][]*sent, answered func(), heard func(message)) map[string]error {
	if answered == nil {
		answered = func() {}
	}
	if heard == nil {
		heard = func(message) {}
	}
	ctx, cancel := context.WithTimeout(context.Background(), procTimeout)
	defer cancel()
	var mu sync.Mutex
	errs := map[string]error{}
	var wg sync.WaitGroup
	for user, list := range msgs {
		wg.Go(func() {
			err := talk(ctx, base, user, list, 8, answered, heard)
			mu.Lock()
			errs[user] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	return errs
}

// checkAnswers checks the answer of each message sent since the server
// started: a message it already had (acked, or found in its history) must
// be answered as a duplicate with the message stored the first time;
// another must be stored anew with an id above every id the server started
// with. Then the answer is what the client knows. It returns how many were
// answered and how many of those were duplicates.
func checkAnswers(t *testing.T, msgs []*sent, startID int64) (answered, duplicates int) {
	t.Helper()
	for _, m := range msgs {
		a := m.answer
		if a == nil {
			continue
		}
		m.answer = nil
		answered++
		switch {
		case !a.OK:
			t.Errorf("%s %s: got %+v, want ok", m.user, m.cid, a)
		case m.stored != nil:
			duplicates++
			if !a.Duplicate || a.Message != *m.stored {
				t.Errorf("%s %s sent again: got %+v, want duplicate and %+v", m.user, m.cid, a, *m.stored)
			}
		default:
			got := a.Message
			if a.Duplicate || got.ID <= startID || got.Username != m.user || got.Room != m.room || got.CID != m.cid || got.Text != m.text {
				t.Errorf("%s %s: got %+v, want a new message with an id above %d", m.user, m.cid, a, startID)
			}
			m.stored = &got
		}
		m.acked = true
	}
	return answered, duplicates
}

// checkHistory reads every room's history back from the server and checks
// it against what the clients know: in id order; every message stored once
// (a username and a cid at most once in a room); nothing that was never
// sent; every message acked or seen stored before, unchanged (id, cid,
// time, text). A message sent but never answered may be there or not; if it
// is, it is noted as stored. It returns the largest id and how many of the
// unanswered messages it found.
func checkHistory(t *testing.T, p *chatProc, rooms []string, msgs []*sent) (maxID int64, found int) {
	t.Helper()
	type key struct{ user, room, cid string }
	byKey := map[key]*sent{}
	for _, m := range msgs {
		byKey[key{m.user, m.room, m.cid}] = m
	}
	seen := map[key]bool{}
	for _, room := range rooms {
		list := p.history(t, room)
		for i, got := range list {
			if i > 0 && got.ID <= list[i-1].ID {
				t.Errorf("%s: id %d after %d", room, got.ID, list[i-1].ID)
			}
			maxID = max(maxID, got.ID)
			k := key{got.Username, got.Room, got.CID}
			m := byKey[k]
			switch {
			case got.Room != room || m == nil:
				t.Errorf("%s: got %+v, which nobody sent", room, got)
				continue
			case seen[k]:
				t.Errorf("%s: %+v is stored twice", room, got)
				continue
			case m.stored != nil && got != *m.stored:
				t.Errorf("%s: got %+v, want %+v", room, got, *m.stored)
			case m.stored == nil:
				if got.Text != m.text || got.Timestamp == "" {
					t.Errorf("%s: got %+v, want the text %q", room, got, m.text)
				}
				stored := got
				m.stored = &stored
				found++
			}
			seen[k] = true
		}
	}
	for _, m := range msgs {
		if m.stored != nil && !seen[key{m.user, m.room, m.cid}] {
			what := "announced or found stored"
			if m.acked {
				what = "acked"
			}
			t.Errorf("lost: %s %s in %s, %s: %+v", m.user, m.cid, m.room, what, *m.stored)
		}
	}
	return maxID, found
}

// testKillRounds: clients send acknowledged messages with cids, at once,
// in two rooms, and the server is killed with SIGKILL at a random moment
// (once a random number of acks has come back, with more in flight), then
// started again on the same directory, several rounds. After each restart
// every acknowledged message is there once, unchanged and in id order, and
// new ids are above every old one. Each round, the clients first send again
// what went unanswered (as a client does after a crash): what the server
// had stored is answered as a duplicate. At the end, new sessions send
// every message ever sent again, and nothing new is stored.
func testKillRounds(t *testing.T, bin string) {
	rounds := 5
	if testing.Short() {
		rounds = 2
	}
	const (
		perRound = 60 // new messages of each user per round
		users    = 4
	)
	rooms := []string{defaultRoomName, "side"}
	// Every message stays in the kept history, so every cid counts.
	flags := []string{"-history", "5000", "-rate", "1e6", "-burst", "1000000"}
	dir := t.TempDir()
	var all []*sent
	byUser := map[string][]*sent{} // in the order each user first sent them

	for round := 1; round <= rounds; round++ {
		p := startChat(t, bin, dir, flags...)
		startID, found := checkHistory(t, p, rooms, all)
		if t.Failed() {
			t.FailNow()
		}
		before := countStored(all)
		// This round's messages: first what went unanswered, then new ones.
		queue := map[string][]*sent{}
		resent := 0
		for u := range users {
			user := fmt.Sprint("user", u)
			for _, m := range byUser[user] {
				if !m.acked {
					queue[user] = append(queue[user], m)
					resent++
				}
			}
			for i := range perRound {
				m := &sent{
					user: user, room: rooms[(u+i)%len(rooms)],
					cid:  fmt.Sprintf("r%d-%s-%d-%s", round, user, i, fmt.Sprintf("%08x", rand.Uint32())),
					text: fmt.Sprintf("%s, round %d, message %d", user, round, i),
				}
				queue[user] = append(queue[user], m)
				byUser[user] = append(byUser[user], m)
				all = append(all, m)
			}
		}
		// Kill once a random number of acks is in: the other clients are
		// still sending, and each has up to 8 messages in flight. A
		// new_message is a promise too: what anyone heard of is on disk.
		target := int64(10 + rand.IntN(users*perRound/2))
		var answers atomic.Int64
		due := make(chan struct{})
		ended := make(chan map[string]error, 1)
		var heardMu sync.Mutex
		heard := map[[3]string]message{} // by username, room, cid
		go func() {
			ended <- talkAll(p.base, queue, func() {
				if answers.Add(1) == target {
					close(due)
				}
			}, func(m message) {
				heardMu.Lock()
				heard[[3]string{m.Username, m.Room, m.CID}] = m
				heardMu.Unlock()
			})
		}()
		select {
		case <-due:
		case errs := <-ended:
			t.Fatalf("round %d: every client ended before the kill (%d answers of %d due): %v", round, answers.Load(), target, errs)
		case <-time.After(procTimeout):
			t.Fatalf("round %d: %d acks of %d within %v", round, answers.Load(), target, procTimeout)
		}
		p.kill(t)
		var errs map[string]error
		select {
		case errs = <-ended:
		case <-time.After(procTimeout):
			t.Fatalf("round %d: the clients did not end with the server", round)
		}
		cut, inFlight := 0, 0
		for _, err := range errs {
			if err != nil {
				cut++
			}
		}
		var sentNow []*sent
		for _, list := range queue {
			sentNow = append(sentNow, list...)
			for _, m := range list {
				if m.sends > 0 && m.answer == nil && !m.acked {
					inFlight++
				}
			}
		}
		answered, dups := checkAnswers(t, sentNow, startID)
		announced := 0 // in flight, but someone got its new_message
		for _, m := range sentNow {
			h, ok := heard[[3]string{m.user, m.room, m.cid}]
			switch {
			case !ok:
			case m.stored == nil:
				m.stored = &h
				announced++
			case *m.stored != h:
				t.Errorf("new_message: got %+v, want %+v", h, *m.stored)
			}
		}
		// What was never sent is forgotten: a client sends it as new.
		unsent := func(m *sent) bool { return m.sends == 0 }
		all = slices.DeleteFunc(all, unsent)
		for user := range byUser {
			byUser[user] = slices.DeleteFunc(byUser[user], unsent)
		}
		t.Logf("round %d: restarted with %d messages (%d of the unanswered found stored); %d unanswered sent again; SIGKILL after %d acks (%d of them duplicates), %d messages in flight (%d of them announced), %d of %d clients cut off",
			round, before, found, resent, answered, dups, inFlight, announced, cut, users)
	}

	// Started again: the clients send what was never answered, and the
	// server is stopped the operator's way.
	p := startChat(t, bin, dir, flags...)
	startID, found := checkHistory(t, p, rooms, all)
	queue := map[string][]*sent{}
	for user, list := range byUser {
		for _, m := range list {
			if !m.acked {
				queue[user] = append(queue[user], m)
			}
		}
	}
	for user, err := range talkAll(p.base, queue, nil, nil) {
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
	}
	answered, dups := checkAnswers(t, all, startID)
	p.stop(t)
	t.Logf("after the last kill: %d unanswered messages found stored; %d sent again, %d of them duplicates", found, answered, dups)

	// Once more: every message again, from new sessions. Nothing is stored.
	p = startChat(t, bin, dir, flags...)
	startID, _ = checkHistory(t, p, rooms, all)
	for user, err := range talkAll(p.base, byUser, nil, nil) {
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
	}
	if answered, dups := checkAnswers(t, all, startID); answered != len(all) || dups != len(all) {
		t.Errorf("every message sent again: got %d answers, %d duplicates, want %d of each", answered, dups, len(all))
	}
	if maxID, _ := checkHistory(t, p, rooms, all); maxID != startID || countStored(all) != len(all) {
		t.Errorf("after sending everything again: got max id %d (was %d), %d of %d messages stored", maxID, startID, countStored(all), len(all))
	}
	t.Logf("%d messages in %d rounds, ids up to %d: all there once, sent again as duplicates", len(all), rounds, startID)
}

// countStored is how many messages are known to be stored.
func countStored(msgs []*sent) int {
	n := 0
	for _, m := range msgs {
		if m.stored != nil {
			n++
		}
	}
	return n
}

// sendAll sends msgs as user, one session, and fails unless each is
// stored anew with an id above startID.
func sendAll(t *testing.T, p *chatProc, user string, msgs []*sent, startID int64) {
	t.Helper()
	if err := talkAll(p.base, map[string][]*sent{user: msgs}, nil, nil)[user]; err != nil {
		t.Fatalf("%s: %v", user, err)
	}
	if answered, dups := checkAnswers(t, msgs, startID); answered != len(msgs) || dups != 0 {
		t.Fatalf("got %d answers, %d duplicates, want %d new messages", answered, dups, len(msgs))
	}
}

// newMessages makes n messages of user's in general.
func newMessages(user string, n int) []*sent {
	var msgs []*sent
	for i := range n {
		msgs = append(msgs, &sent{user: user, room: defaultRoomName, cid: fmt.Sprintf("%s-%d-%s", user, i, fmt.Sprintf("%08x", rand.Uint32())), text: fmt.Sprintf("%s says %d", user, i)})
	}
	return msgs
}

// journalLines reads the journal of dir and returns it with the offset of
// each line.
func journalLines(t *testing.T, dir string) (data []byte, starts []int) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, journalFile))
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); {
		starts = append(starts, off)
		n := bytes.IndexByte(data[off:], '\n')
		if n < 0 {
			break
		}
		off += n + 1
	}
	return data, starts
}

// testTornTail: a journal whose last record was cut short (the crash came
// in the middle of a write) still starts; the cut record is gone, and the
// file is cut back to its last whole record, so that the next append
// starts on a line of its own: later messages survive the next restart.
// Each kind of tear is made on the file the previous restart left.
func testTornTail(t *testing.T, bin string) {
	dir := t.TempDir()
	p := startChat(t, bin, dir)
	all := newMessages("alice", 6)
	sendAll(t, p, "alice", all, 0)
	p.stop(t)

	tears := []struct {
		name string
		tear func(last []byte) []byte // the last line, newline included
	}{
		{"half of the record", func(last []byte) []byte { return last[:len(last)/2] }},
		{"all but the newline", func(last []byte) []byte { return last[:len(last)-1] }},
		{"inside the checksum", func(last []byte) []byte { return last[:3] }},
		{"zeros where the middle was", func(last []byte) []byte {
			torn := slices.Clone(last)
			clear(torn[len(torn)/3 : 2*len(torn)/3])
			return torn
		}},
	}
	for i, tear := range tears {
		data, starts := journalLines(t, dir)
		last := starts[len(starts)-1]
		torn := append(slices.Clone(data[:last]), tear.tear(data[last:])...)
		if err := os.WriteFile(filepath.Join(dir, journalFile), torn, 0o644); err != nil {
			t.Fatal(err)
		}
		all = all[:len(all)-1] // the torn one is lost
		p := startChat(t, bin, dir)
		if got := p.history(t, defaultRoomName); len(got) != len(all) {
			t.Fatalf("%s: got %d messages %+v, want %d", tear.name, len(got), got, len(all))
		}
		maxID, _ := checkHistory(t, p, []string{defaultRoomName}, all)
		if cut, _ := journalLines(t, dir); !bytes.Equal(cut, data[:last]) {
			t.Errorf("%s: the journal is %d bytes, want it cut back to its %d good ones", tear.name, len(cut), last)
		}
		more := newMessages(fmt.Sprint("bob", i), 2)
		sendAll(t, p, more[0].user, more, maxID)
		all = append(all, more...)
		p.kill(t)
		t.Logf("%s: the torn record dropped, %d messages kept", tear.name, len(all))
	}
	p = startChat(t, bin, dir)
	checkHistory(t, p, []string{defaultRoomName}, all)
	p.stop(t)
}

// testDamagedMiddle: damage before the last record, or to the last one
// whole (not cut short, no hole of zeros), stops the start with an error on
// stderr that names the file and the offset of the damaged record,
// a non-zero exit, and the file left as it was, byte for byte. Put right,
// the directory starts again with every message.
func testDamagedMiddle(t *testing.T, bin string) {
	dir := t.TempDir()
	p := startChat(t, bin, dir)
	msgs := newMessages("alice", 8)
	sendAll(t, p, "alice", msgs, 0)
	p.stop(t)
	good, starts := journalLines(t, dir)
	path := filepath.Join(dir, journalFile)

	notRecord := appendRecord(nil, record{}) // a right checksum over no record
	for _, damage := range []struct {
		name string
		line int
		make func(line []byte) []byte // the line, newline included
	}{
		{"a letter of the text", 3, func(line []byte) []byte {
			i := bytes.Index(line, []byte(`"text":"`)) + len(`"text":"`)
			line[i] ^= 0x20 // a to A: still JSON, a wrong checksum
			return line
		}},
		{"a digit of the checksum", 1, func(line []byte) []byte {
			if line[2] == '0' {
				line[2] = '1'
			} else {
				line[2] = '0'
			}
			return line
		}},
		{"a record's newline", 0, func(line []byte) []byte { line[len(line)-1] = ' '; return line }},
		{"a checksummed line that is no record", 5, func([]byte) []byte { return slices.Clone(notRecord) }},
		{"the last but one line, zeroed", 6, func(line []byte) []byte { clear(line[:len(line)-1]); return line }},
		// The last line whole, newline and all, with no hole of zeros: a
		// crash did not cut it short, something changed it since.
		{"a letter of the last line's text", 7, func(line []byte) []byte {
			i := bytes.Index(line, []byte(`"text":"`)) + len(`"text":"`)
			line[i] ^= 0x20
			return line
		}},
	} {
		end := len(good)
		if damage.line+1 < len(starts) {
			end = starts[damage.line+1]
		}
		damaged := slices.Concat(good[:starts[damage.line]], damage.make(slices.Clone(good[starts[damage.line]:end])), good[end:])
		if err := os.WriteFile(path, damaged, 0o644); err != nil {
			t.Fatal(err)
		}
		stderr := failToStart(t, bin, dir)
		if want := fmt.Sprintf("offset %d", starts[damage.line]); !strings.Contains(stderr, path) || !strings.Contains(stderr, want) {
			t.Errorf("%s: got stderr %q, want it to name %s and %q", damage.name, stderr, path, want)
		}
		if after, err := os.ReadFile(path); err != nil || !bytes.Equal(after, damaged) {
			t.Errorf("%s: the file changed (%v): %d bytes, were %d", damage.name, err, len(after), len(damaged))
		}
		t.Logf("%s: %s", damage.name, strings.TrimSpace(stderr))
	}

	if err := os.WriteFile(path, good, 0o644); err != nil {
		t.Fatal(err)
	}
	p = startChat(t, bin, dir)
	checkHistory(t, p, []string{defaultRoomName}, msgs)
	p.stop(t)
}

// testSecondServer: while a server runs on a directory, a second one on
// the same directory exits non-zero with an error about the lock, and
// touches nothing; the first goes on. A killed server leaves no lock behind.
func testSecondServer(t *testing.T, bin string) {
	dir := t.TempDir()
	first := startChat(t, bin, dir)
	msgs := append(newMessages("alice", 2), newMessages("bob", 1)...)
	sendAll(t, first, "alice", msgs[:2], 0)
	before, _ := journalLines(t, dir)

	stderr := failToStart(t, bin, dir)
	if !strings.Contains(stderr, "lock") || !strings.Contains(stderr, dir) {
		t.Errorf("second server: got stderr %q, want an error about the lock of %s", stderr, dir)
	}
	if after, _ := journalLines(t, dir); !bytes.Equal(after, before) {
		t.Errorf("the second server changed the journal")
	}
	sendAll(t, first, "bob", msgs[2:], msgs[1].stored.ID) // the first goes on
	first.kill(t)

	again := startChat(t, bin, dir)
	checkHistory(t, again, []string{defaultRoomName}, msgs)
	t.Logf("second server: %s", strings.TrimSpace(stderr))
}

// testStartupTime: a journal of 1,000 rooms of 100 messages each (written
// here in the journal's format) is read back by a starting server: how long
// from its start to its listening line. The target is under a second; the
// test allows ten, so that a loaded machine does not fail it.
func testStartupTime(t *testing.T, bin string) {
	rooms, perRoom := int64(1000), int64(100)
	if testing.Short() {
		perRoom = 10
	}
	empty := startChat(t, bin, filepath.Join(t.TempDir(), "empty"))
	empty.stop(t)
	dir := t.TempDir()
	// By hand, as appendRecord writes it: encoding/json under -race would
	// take longer than the start-up it measures.
	var buf, payload []byte
	for id := int64(1); id <= rooms*perRoom; id++ {
		payload = fmt.Appendf(payload[:0], `{"id":%d,"room":"room-%d","username":"user%d",`+
			`"text":"message %d, about as long as a line of chat usually is",`+
			`"timestamp":"2026-11-25T21:08:47.123Z","cid":"cid-%d-abcdefgh"}`, id, id%rooms, id%97, id, id)
		buf = fmt.Appendf(buf, "%08x %s\n", crc32.Checksum(payload, castagnoli), payload)
	}
	if want := appendRecord(nil, record{ID: 1, Room: "room-1", Username: "user1",
		Text:      "message 1, about as long as a line of chat usually is",
		Timestamp: "2026-11-25T21:08:47.123Z", CID: "cid-1-abcdefgh"}); !bytes.HasPrefix(buf, want) {
		t.Fatalf("the journal written by hand begins %q, want %q", buf[:len(want)], want)
	}
	if err := os.WriteFile(filepath.Join(dir, journalFile), buf, 0o644); err != nil {
		t.Fatal(err)
	}
	p := startChat(t, bin, dir)
	if p.took > 10*time.Second {
		t.Errorf("start-up took %v, want well under 10 s (the target is 1 s)", p.took)
	}
	for _, room := range []string{"room-0", "room-999"} {
		list := p.history(t, room)
		if int64(len(list)) != perRoom || list[len(list)-1].ID <= rooms*perRoom-rooms {
			t.Errorf("%s: got %d messages, want %d up to the last ids", room, len(list), perRoom)
		}
	}
	sendAll(t, p, "alice", newMessages("alice", 1), rooms*perRoom)
	p.stop(t)
	// The CPU time says what the wall time does not on a loaded machine.
	cpu := func(p *chatProc) time.Duration {
		return (p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()).Round(time.Millisecond)
	}
	t.Logf("start-up: %v to listening (%v of CPU in all) with a journal of %d rooms × %d messages (%.1f MB); %v (%v) with an empty directory",
		p.took.Round(time.Millisecond), cpu(p), rooms, perRoom, float64(len(buf))/1e6, empty.took.Round(time.Millisecond), cpu(empty))
}

// TestJournalIdleRooms: a restart loses no room message (PROTOCOL.md
// section 9), however many rooms there are. After a restart every room is
// idle (nobody has joined yet), and the cap on idle rooms
// (cfg.MaxIdleRooms, 1,000) must not forget the history of the others:
// neither for GET /messages nor, at the next compaction, on disk.
func TestJournalIdleRooms(t *testing.T) {
	t.Parallel()
	const rooms = 1001
	var recs []record
	for i := range int64(rooms) {
		recs = append(recs, testRecord(i+1, fmt.Sprint("room-", i)))
	}
	dir, path := writeJournal(t, recs)
	srv, ts := startDataServer(t, dir, nil)
	srv.journal.minGrowth, srv.journal.compacted = 0, 0 // the next append compacts (before it: the committer's fields)
	for i := range rooms {
		if _, body := httpGet(t, fmt.Sprintf("%s/messages?room=room-%d", ts.URL, i)); !strings.Contains(body, `"id"`) {
			t.Errorf("room-%d: got %s after the restart, want its message", i, body)
		}
	}
	alice := joined(t, ts, "alice")
	sendCID(t, alice, "general", "compact", "c", "new_message")
	waitUntil(t, waitTimeout, "a compaction", func() bool { return srv.journal.compactions.Load() > 0 })
	if data, _ := os.ReadFile(path); !bytes.Contains(data, []byte(`"room":"room-0"`)) {
		t.Errorf("after a compaction the journal has no record of room-0 (%d bytes)", len(data))
	}
}
