package main

// Tests of compaction (compact.go): the journal rewritten with what the
// rooms keep, while messages go on being appended.

import (
	"bytes"
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

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

// TestJournalCompactionWhilePosting: the server's side of a compaction.
// Sixteen goroutines post into three rooms that keep 4 messages each, some
// with a cid sent twice, while the journal compacts after nearly every
// batch. Every acked message a room still keeps must be on disk once, and
// nothing may be left half done (srv.posted, r.writing, r.posting). A
// message written just before a compaction began, and not yet published,
// is in the snapshot only because snapshot publishes what is written first.
// That is a race, which one round does not always hit: hence ten rounds
// (README, Tests, says how often they catch that step left out).
func TestJournalCompactionWhilePosting(t *testing.T) {
	t.Parallel()
	for round := range 10 {
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
