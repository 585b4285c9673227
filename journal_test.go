package main

import (
	"bytes"
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
		// Whole, with its newline and no hole of zeros: not torn, rotten.
		{"a flipped byte in the last record", func(d []byte) []byte { d[3*line+30] ^= 0x01; return d }, 3 * line},
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
	lastFlipped := slices.Clone(good)
	lastFlipped[len(good)-10] ^= 0x20
	f.Add(lastFlipped)
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
