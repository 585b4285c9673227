// Compaction: the journal rewritten with only what the rooms keep
// (journal.go has the journal itself).
//
// The file only grows, but rooms keep only their last -history messages.
// Once it is twice its size after the last compaction (plus minGrowth), a
// compaction begins: a goroutine of its own asks the server for what it
// keeps (snapshot), writes that to journal.new and syncs it, while the
// committer goes on appending to journal, and notes what it appends
// meanwhile (a full history takes a while to write; the chat must not wait
// for it). Then, between two batches, the committer appends to journal.new
// what the snapshot missed, syncs it, renames it over journal and syncs the
// directory: rename is atomic and the directory's sync makes it durable, so
// after a crash the name means the old file or the new one, both complete.
// Doubling keeps the cost per message constant.
package main

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
)

// compaction is a compaction under way: the snapshot being written to
// journal.new by a goroutine of its own, and the records the committer
// appended to journal meanwhile, which the snapshot may lack.
type compaction struct {
	done   chan struct{} // closed once journal.new has the snapshot, synced
	f      *os.File      // journal.new
	size   int64         // bytes written to it
	last   int64         // the largest id in the snapshot
	err    error
	missed []record // appended since the compaction began (the committer's)
}

// written is closed once the snapshot is written; nil (never ready, in a
// select) when no compaction is under way.
func (c *compaction) written() <-chan struct{} {
	if c == nil {
		return nil
	}
	return c.done
}

// beginCompaction starts writing the snapshot to journal.new. Every record
// written before it began is in the snapshot (the server publishes what is
// written before it takes one), and maybe some written since; all those
// appended since are noted in missed, and endCompaction sorts them out.
func (j *journal) beginCompaction() {
	c := &compaction{done: make(chan struct{})}
	j.compacting = c
	go func() {
		defer close(c.done)
		var buf []byte
		for _, r := range j.snapshot() {
			buf = appendRecord(buf, r)
			c.last = max(c.last, r.ID)
		}
		name := filepath.Join(j.dir, journalNew)
		c.f, c.err = os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
		if c.err == nil {
			_, c.err = c.f.Write(buf)
			c.size = int64(len(buf))
		}
		if c.err == nil {
			c.err = c.f.Sync()
		}
	}()
}

// endCompaction completes the compaction whose snapshot is written: it
// appends what the snapshot missed (the records above its largest id: the
// server appends in the order of ids, so every one below is in it or no
// longer kept), syncs, and renames journal.new over journal. Until the
// rename the old file is untouched and complete; after it, the new one is.
func (j *journal) endCompaction() {
	c := j.compacting
	j.compacting = nil
	name := filepath.Join(j.dir, journalNew)
	err := cmp.Or(j.err, c.err) // after a failed write, journal may lack records: keep it as it is
	if err == nil {
		j.buf = j.buf[:0]
		for _, r := range c.missed {
			if r.ID > c.last {
				j.buf = appendRecord(j.buf, r)
			}
		}
		_, err = c.f.Write(j.buf)
		c.size += int64(len(j.buf))
	}
	if err == nil {
		err = c.f.Sync()
	}
	if err == nil {
		err = os.Rename(name, j.path)
	}
	if err == nil {
		err = syncDir(j.dir)
	}
	if err != nil {
		c.f.Close()     // a nil f (open failed) only answers ErrInvalid
		os.Remove(name) // gone already if the rename happened
		if j.err == nil {
			j.err = fmt.Errorf("journal: compacting: %w", err)
		}
		return
	}
	j.f.Close() // the old file, unlinked by the rename
	j.f = c.f
	j.size = c.size
	j.compacted = j.size
	j.compactions.Add(1)
}
