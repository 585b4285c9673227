package main

import (
	"bytes"
	"cmp"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// testRecord is record id of room, with a text and a cid that tell records
// apart.
func testRecord(id int64, room string) record {
	return record{
		ID: id, Room: room, Username: "alice",
		Text:      fmt.Sprintf("message %d says \"hi\" <b>", id),
		Timestamp: "2026-11-25T21:08:47.123Z", CID: fmt.Sprintf("c%d", id),
	}
}

// openTestJournal opens dir, failing the test on error, and closes the
// journal when the test ends unless the test closed it.
func openTestJournal(t *testing.T, dir string, keep int, snapshot func() []record) (*journal, []record) {
	t.Helper()
	j, history, err := openJournal(dir, keep, snapshot)
	if err != nil {
		t.Fatalf("openJournal: %v", err)
	}
	t.Cleanup(func() { j.close() })
	return j, history
}

// noSnapshot is the snapshot of tests that never grow past compactFloor.
func noSnapshot() []record { return nil }

// appendWait appends r and waits until it is published.
func appendWait(t *testing.T, j *journal, r record) {
	t.Helper()
	done := make(chan error, 1)
	if err := j.append(r, func(err error) { done <- err }); err != nil {
		t.Fatalf("append: %v", err)
	}
	if err := receive(t, fmt.Sprintf("record %d published", r.ID), done); err != nil {
		t.Fatalf("published: %v", err)
	}
}

// receive waits up to 5 s for a value (or the close) of ch.
func receive[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not within 5s", what)
		var zero T
		return zero
	}
}

// writeJournal writes a journal file of recs into a new directory.
func writeJournal(t *testing.T, recs []record) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, journalFile)
	var buf []byte
	for _, r := range recs {
		buf = appendRecord(buf, r)
	}
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

// sameRecords fails the test where got and want differ.
func sameRecords(t *testing.T, got, want []record) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("got %d records %v,\nwant %d records %v", len(got), got, len(want), want)
	}
}

func TestJournalRoundTrip(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	j, history := openTestJournal(t, dir, 100, noSnapshot)
	if len(history) != 0 {
		t.Fatalf("a new directory has history %v", history)
	}
	var want []record
	for i := int64(1); i <= 20; i++ {
		r := testRecord(i, []string{"general", "dev", "日本"}[i%3])
		if i == 5 {
			r.CID, r.Text = "", "two\nlines, a tab\t, a NUL \x00 and ✓"
		}
		appendWait(t, j, r)
		want = append(want, r)
	}
	if err := j.close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := j.append(testRecord(21, "dev"), func(error) { t.Error("published after close") }); err != errJournalClosed {
		t.Fatalf("append after close: got %v, want %v", err, errJournalClosed)
	}

	j, history = openTestJournal(t, dir, 100, noSnapshot)
	sameRecords(t, history, want)
	r := testRecord(21, "dev")
	appendWait(t, j, r)
	want = append(want, r)
	if err := j.close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	_, history = openTestJournal(t, dir, 100, noSnapshot)
	sameRecords(t, history, want)
}

func TestJournalKeepsLastPerRoomAndMaxID(t *testing.T) {
	t.Parallel()
	// Room a gets ids 1..30 but 7, b gets 7, c gets 40 (the largest id)
	// after 31..39 in a: keep 4 must trim a and still keep 40.
	var recs []record
	for i := int64(1); i <= 39; i++ {
		if i != 7 {
			recs = append(recs, testRecord(i, "a"))
		}
	}
	recs = slices.Insert(recs, 6, testRecord(7, "b"))
	recs = append(recs, testRecord(40, "c"))
	dir, _ := writeJournal(t, recs)

	_, history := openTestJournal(t, dir, 4, noSnapshot)
	want := []record{testRecord(7, "b"), testRecord(36, "a"), testRecord(37, "a"),
		testRecord(38, "a"), testRecord(39, "a"), testRecord(40, "c")}
	sameRecords(t, history, want)
	if got := history[len(history)-1].ID; got != 40 {
		t.Fatalf("last id: got %d, want 40", got)
	}
}

func TestJournalGroupCommit(t *testing.T) {
	t.Parallel()
	j, _ := openTestJournal(t, t.TempDir(), 1000, noSnapshot)

	// The server appends under its mutex, taking ids in the same breath;
	// the journal must publish in that order.
	const records = 401
	var (
		serverMu sync.Mutex
		nextID   int64
		lastID   int64 // the last one published
		all      = make(chan struct{})
	)
	appendNext := func(then func()) {
		serverMu.Lock()
		defer serverMu.Unlock()
		nextID++
		id := nextID
		err := j.append(testRecord(id, "general"), func(err error) {
			if err != nil {
				t.Errorf("record %d: %v", id, err)
			}
			then()
			serverMu.Lock()
			defer serverMu.Unlock()
			if id != lastID+1 {
				t.Errorf("record %d published after record %d", id, lastID)
			}
			if lastID = id; id == records {
				close(all)
			}
		})
		if err != nil {
			t.Errorf("append: %v", err)
		}
	}

	// The first record's publication holds the committer, as a slow fsync
	// would, while 400 more are appended from 8 goroutines: they must all
	// share the next fsync.
	started, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) }) // before the cleanup's close
	appendNext(func() { close(started); <-release })
	receive(t, "the first record's publication", started)
	var appenders sync.WaitGroup
	for range 8 {
		appenders.Go(func() {
			for range 50 {
				appendNext(func() {})
			}
		})
	}
	appenders.Wait()
	releaseOnce.Do(func() { close(release) })
	receive(t, "every record published", all)

	if got := j.syncs.Load(); got != 2 {
		t.Fatalf("fsyncs for %d records: got %d, want 2", records, got)
	}
	if err := j.close(); err != nil {
		t.Fatal(err)
	}
	if _, history := openTestJournal(t, j.dir, 1000, noSnapshot); len(history) != records {
		t.Fatalf("records after reopen: got %d, want %d", len(history), records)
	}
}

func TestJournalTornTail(t *testing.T) {
	t.Parallel()
	recs := []record{testRecord(1, "a"), testRecord(2, "b"), testRecord(3, "a")}
	line := len(appendRecord(nil, recs[0])) // every line here is as long
	for _, tc := range []struct {
		name string
		tear func(data []byte) []byte
		kept int // records that survive
	}{
		{"cut mid-record", func(d []byte) []byte { return d[:len(d)-7] }, 2},
		{"cut in the checksum", func(d []byte) []byte { return d[:2*line+3] }, 2},
		{"zeros before the newline", func(d []byte) []byte {
			copy(d[2*line+20:], make([]byte, 30))
			return d
		}, 2},
		{"an empty last line", func(d []byte) []byte { return append(d, '\n') }, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir, path := writeJournal(t, recs)
			data, _ := os.ReadFile(path)
			if err := os.WriteFile(path, tc.tear(data), 0o644); err != nil {
				t.Fatal(err)
			}

			j, history := openTestJournal(t, dir, 10, noSnapshot)
			sameRecords(t, history, recs[:tc.kept])
			if info, _ := os.Stat(path); info.Size() != int64(tc.kept*line) {
				t.Fatalf("size after cutting the tail: got %d, want %d", info.Size(), tc.kept*line)
			}
			next := testRecord(9, "b")
			appendWait(t, j, next)
			if err := j.close(); err != nil {
				t.Fatal(err)
			}
			_, history = openTestJournal(t, dir, 10, noSnapshot)
			sameRecords(t, history, append(slices.Clone(recs[:tc.kept]), next))
		})
	}
}

func TestJournalDamaged(t *testing.T) {
	t.Parallel()
	recs := []record{testRecord(1, "a"), testRecord(2, "b"), testRecord(3, "a"), testRecord(4, "a")}
	line := len(appendRecord(nil, recs[0])) // every test record's line is as long
	for _, tc := range []struct {
		name   string
		damage func(data []byte) []byte
		offset int
	}{
		{"a flipped byte in a middle record", func(d []byte) []byte { d[2*line+30] ^= 0x01; return d }, 2 * line},
		{"a flipped newline", func(d []byte) []byte { d[2*line-1] = 'x'; return d }, line},
		{"a right checksum over a non-record, last", func(d []byte) []byte {
			payload := []byte(`{"id":0}`)
			return append(d, fmt.Appendf(nil, "%08x %s\n", crc32.Checksum(payload, castagnoli), payload)...)
		}, 4 * line},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir, path := writeJournal(t, recs)
			data, _ := os.ReadFile(path)
			data = tc.damage(data)
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			for range 2 { // the second time proves the failed open let go of the lock
				j, _, err := openJournal(dir, 10, noSnapshot)
				if err == nil {
					j.close()
					t.Fatal("openJournal of a damaged file succeeded")
				}
				if want := fmt.Sprintf("%s is damaged at offset %d", path, tc.offset); !strings.Contains(err.Error(), want) {
					t.Fatalf("error: got %q, want it to say %q", err, want)
				}
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(after, data) {
				t.Fatal("openJournal changed a damaged file")
			}
		})
	}
}

// TestJournalCompactionWhilePosting: the server's side of a compaction.
// Sixteen goroutines post into three rooms that keep 4 messages each, some
// with a cid sent twice, while the journal compacts after nearly every
// batch. Every acked message a room still keeps must be on disk once, and
// nothing may be left half done (srv.posted, r.writing, r.posting). A
// message written just before a compaction began, and not yet published,
// is in the snapshot only because snapshot publishes what is written first.
func TestJournalCompactionWhilePosting(t *testing.T) {
	t.Parallel()
	for round := range 3 {
		dir := t.TempDir()
		cfg := testConfig()
		cfg.History = 4
		srv := newServer(cfg)
		if err := srv.keepHistory(dir); err != nil {
			t.Fatal(err)
		}
		srv.journal.minGrowth, srv.journal.compacted = 0, 0 // (before the first append: the committer's fields)
		rooms := []string{"a", "b", "c"}
		var (
			mu    sync.Mutex
			acked = map[int64]message{}
			wg    sync.WaitGroup
		)
		for g := range 16 {
			wg.Go(func() {
				for i := range 60 {
					cid := ""
					if i%2 == 0 {
						cid = fmt.Sprintf("g%d-%d", g, i/4) // the same cid twice in a row
					}
					srv.mu.Lock()
					m, duplicate, err := srv.post(srv.room(rooms[(g+i)%3]), fmt.Sprint("u", g), "hi", cid)
					srv.mu.Unlock()
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					if _, ok := acked[m.ID]; ok && !duplicate {
						t.Errorf("id %d acked twice as new", m.ID)
					}
					acked[m.ID] = m
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		srv.mu.Lock()
		if len(srv.posted) != 0 {
			t.Errorf("%d messages left in srv.posted", len(srv.posted))
		}
		for _, r := range srv.rooms {
			if r.writing != 0 || len(r.posting) != 0 {
				t.Errorf("room %s: writing %d, posting %d, want 0", r.name, r.writing, len(r.posting))
			}
		}
		srv.mu.Unlock()
		compactions := srv.journal.compactions.Load()
		if err := srv.journal.close(); err != nil {
			t.Fatal(err)
		}
		onDisk, _ := readCompacted(t, dir)
		times := map[int64]int{}
		for _, r := range onDisk {
			if times[r.ID]++; times[r.ID] == 2 {
				t.Errorf("id %d is on disk twice", r.ID)
			}
		}
		perRoom := map[string][]int64{}
		for id, m := range acked {
			perRoom[m.Room] = append(perRoom[m.Room], id)
		}
		for room, ids := range perRoom {
			slices.Sort(ids)
			for _, id := range ids[max(0, len(ids)-cfg.History):] {
				if times[id] == 0 {
					t.Errorf("round %d, room %s: acked id %d is not on disk", round, room, id)
				}
			}
		}
		if compactions < 3 {
			t.Errorf("round %d: %d compactions, want a few at least", round, compactions)
		}
	}
}

// readCompacted reads every record of dir's journal, which must be whole
// (no torn tail), and its bytes.
func readCompacted(t *testing.T, dir string) ([]record, []byte) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, journalFile))
	if err != nil {
		t.Fatal(err)
	}
	onDisk, good, err := readJournal("journal", data, 1000)
	if err != nil || good != int64(len(data)) {
		t.Fatalf("reading the compacted file: %v (%d of %d bytes good)", err, good, len(data))
	}
	return onDisk, data
}

func TestJournalCompaction(t *testing.T) {
	t.Parallel()
	const keep = 3
	dir := t.TempDir()

	// A small server: rooms of their last keep messages, and what its last
	// snapshot returned along with how much was published by then.
	var (
		mu        sync.Mutex
		rooms     = map[string][]record{}
		published []record
		lastSnap  []record
		snapAt    int
	)
	snapshot := func() []record {
		mu.Lock()
		defer mu.Unlock()
		var all []record
		for _, rs := range rooms {
			all = append(all, rs...)
		}
		slices.SortFunc(all, func(a, b record) int { return cmp.Compare(a.ID, b.ID) })
		lastSnap, snapAt = all, len(published)
		return all
	}
	j, _ := openTestJournal(t, dir, keep, snapshot)
	j.minGrowth = 0 // compact whenever the file has doubled: every dozen records or so

	for i := int64(1); i <= 60; i++ {
		r := testRecord(i, []string{"a", "b", "c", "d"}[i%4])
		// As the server will: the record joins its room when published.
		done := make(chan error, 1)
		err := j.append(r, func(err error) {
			mu.Lock()
			published = append(published, r)
			rs := append(rooms[r.Room], r)
			rooms[r.Room] = rs[max(0, len(rs)-keep):]
			mu.Unlock()
			done <- err
		})
		if err == nil {
			err = receive(t, fmt.Sprintf("record %d published", i), done)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := j.close(); err != nil {
		t.Fatal(err)
	}
	if j.compactions.Load() < 3 {
		t.Fatalf("compactions: got %d, want at least 3", j.compactions.Load())
	}

	// The file is exactly the last snapshot and what came after it.
	onDisk, _ := readCompacted(t, dir)
	sameRecords(t, onDisk, append(slices.Clone(lastSnap), published[snapAt:]...))
	if _, err := os.Stat(filepath.Join(dir, journalNew)); err == nil {
		t.Fatalf("%s left behind", journalNew)
	}

	// And it reopens to what the server held.
	_, history := openTestJournal(t, dir, keep, noSnapshot)
	want := snapshot()
	sameRecords(t, history, want)
}

// TestJournalCompactionWhileAppending: a compaction does not hold the chat
// up, and loses nothing appended while it writes. The snapshot is held
// until five more records are published; it returns what was kept when it
// was called (those five must come from the committer's notes), or what is
// kept once they are in (they must not be written twice).
func TestJournalCompactionWhileAppending(t *testing.T) {
	t.Parallel()
	for _, late := range []bool{false, true} {
		t.Run(fmt.Sprintf("snapshot taken late: %v", late), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			var (
				mu        sync.Mutex
				kept      []record
				published = make(chan int64, 100)
				asked     = make(chan struct{}, 1)
			)
			snapshot := func() []record {
				mu.Lock()
				snap := slices.Clone(kept)
				mu.Unlock()
				asked <- struct{}{}
				for range 5 {
					receive(t, "a record published while the snapshot is held", published)
				}
				if late {
					mu.Lock()
					snap = slices.Clone(kept)
					mu.Unlock()
				}
				return snap
			}
			j, _ := openTestJournal(t, dir, 100, snapshot)
			j.minGrowth = 0 // compact as soon as the file has doubled

			add := func(id int64) {
				t.Helper()
				r := testRecord(id, "a")
				done := make(chan error, 1)
				if err := j.append(r, func(err error) {
					mu.Lock()
					kept = append(kept, r)
					mu.Unlock()
					done <- err
				}); err != nil {
					t.Fatal(err)
				}
				if err := receive(t, fmt.Sprintf("record %d published", id), done); err != nil {
					t.Fatal(err)
				}
			}
			add(1) // the file has grown from nothing: a compaction begins
			receive(t, "the snapshot asked for", asked)
			add(2)
			for id := int64(3); id <= 7; id++ {
				add(id) // published while the snapshot is held: nothing waits for it
				published <- id
			}
			waitUntil(t, waitTimeout, "the compaction", func() bool { return j.compactions.Load() == 1 })
			add(8)
			if err := j.close(); err != nil {
				t.Fatal(err)
			}
			onDisk, data := readCompacted(t, dir)
			if bytes.Count(data, []byte("\n")) != 8 {
				t.Errorf("the file has %d lines, want 8, one per record:\n%s", bytes.Count(data, []byte("\n")), data)
			}
			sameRecords(t, onDisk, kept)
		})
	}
}

func TestJournalWriteError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	j, _ := openTestJournal(t, dir, 10, noSnapshot)
	first := testRecord(1, "a")
	appendWait(t, j, first)

	// The committer is idle; a file closed under it fails its next write,
	// as a full or dying disk would.
	j.f.Close()
	errs := make(chan error, 2)
	for i := int64(2); i <= 3; i++ {
		if err := j.append(testRecord(i, "a"), func(err error) { errs <- err }); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := receive(t, "a failed record's answer", errs); err == nil {
			t.Fatal("a record was published although the journal could not write it")
		}
	}
	if err := j.close(); err == nil {
		t.Fatal("close did not report the failed write")
	}
	_, history := openTestJournal(t, dir, 10, noSnapshot)
	sameRecords(t, history, []record{first})
}

func TestJournalLocked(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, _ := openTestJournal(t, dir, 10, noSnapshot)
	second, _, err := openJournal(dir, 10, noSnapshot)
	if err == nil {
		second.close()
		t.Fatal("a second openJournal of an open directory succeeded")
	}
	if !strings.Contains(err.Error(), "held by another server") {
		t.Fatalf("error: got %q, want it to say the directory is held", err)
	}
	if err := first.close(); err != nil {
		t.Fatal(err)
	}
	openTestJournal(t, dir, 10, noSnapshot) // free again
}

// FuzzJournalRead feeds arbitrary bytes to the reader. It must not panic;
// where it accepts a file, the good part alone must read the same, and what
// it returns must survive being written and read again.
func FuzzJournalRead(f *testing.F) {
	var good []byte
	for i := int64(1); i <= 6; i++ {
		good = appendRecord(good, testRecord(i, []string{"a", "b"}[i%2]))
	}
	line := len(appendRecord(nil, testRecord(1, "a")))
	flipped := slices.Clone(good)
	flipped[line+40] ^= 0x20
	f.Add(good)
	f.Add(good[:len(good)-5])
	f.Add(good[:line+4])
	f.Add(flipped)
	f.Add(append(slices.Clone(good), "\x00\x00\x00\n"...))
	f.Add([]byte(""))
	f.Add([]byte("\n"))
	f.Add([]byte("00000000 {}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const keep = 3
		history, good, err := readJournal("fuzz", data, keep)
		if err != nil {
			return
		}
		if good < 0 || good > int64(len(data)) {
			t.Fatalf("good bytes %d of %d", good, len(data))
		}
		again, againGood, err := readJournal("fuzz", data[:good], keep)
		if err != nil || againGood != good || !slices.Equal(again, history) {
			t.Fatalf("the good part reads differently: %v, %d bytes, %v; first %d bytes, %v", err, againGood, again, good, history)
		}
		count := map[string]int{}
		for i, r := range history {
			if count[r.Room]++; count[r.Room] > keep {
				t.Fatalf("more than %d records of room %q", keep, r.Room)
			}
			if i > 0 && r.ID < history[i-1].ID {
				t.Fatalf("ids out of order: %d after %d", r.ID, history[i-1].ID)
			}
		}
		var buf []byte
		for _, r := range history {
			buf = appendRecord(buf, r)
		}
		back, backGood, err := readJournal("fuzz", buf, keep)
		if err != nil || backGood != int64(len(buf)) || !slices.Equal(back, history) {
			t.Fatalf("written again, it reads %v, %d of %d bytes, %v; want %v", err, backGood, len(buf), back, history)
		}
	})
}

// BenchmarkJournalAppend appends from many goroutines, each waiting for
// its record to be published as a client waits for its ack, on whatever
// disk holds the temporary directory.
func BenchmarkJournalAppend(b *testing.B) {
	j, _, err := openJournal(b.TempDir(), 100, noSnapshot)
	if err != nil {
		b.Fatal(err)
	}
	var id atomic.Int64
	b.SetParallelism(32) // 32 appenders per CPU
	b.RunParallel(func(pb *testing.PB) {
		done := make(chan error, 1)
		for pb.Next() {
			if err := j.append(testRecord(id.Add(1), "general"), func(err error) { done <- err }); err != nil {
				b.Error(err)
				return
			}
			if err := <-done; err != nil {
				b.Error(err)
				return
			}
		}
	})
	secs := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)/secs, "records/s")
	b.ReportMetric(float64(j.syncs.Load())/secs, "fsyncs/s")
	if err := j.close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkJournalOpen reads back a journal of 1,000 rooms of 100 messages
// each: the start-up of a full server.
func BenchmarkJournalOpen(b *testing.B) {
	dir := b.TempDir()
	var buf []byte
	for i := int64(1); i <= 100_000; i++ {
		buf = appendRecord(buf, testRecord(i, fmt.Sprintf("room-%d", i%1000)))
	}
	if err := os.WriteFile(filepath.Join(dir, journalFile), buf, 0o644); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(buf))/1e6, "MB")
	// CPU time as well as wall time: on a shared machine, the wall time
	// mostly says how long the other processes held the cores.
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	for b.Loop() {
		j, history, err := openJournal(dir, 100, noSnapshot)
		if err != nil {
			b.Fatal(err)
		}
		if len(history) != 100_000 {
			b.Fatalf("records: got %d, want 100000", len(history))
		}
		j.close()
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano()
	b.ReportMetric(float64(cpu)/1e6/float64(b.N), "cpu-ms/op")
}
