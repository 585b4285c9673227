// The journal: room history that survives a restart (PROTOCOL.md section 9).
//
// With -data, every room message is appended to a file, the journal, before
// it is announced. That order is the idea of a write-ahead log: whatever
// anyone has been told of (a new_message, an ack) is on disk, so a crash
// loses only messages no one has heard of, and their senders, who got no
// ack, send them again (with the same cid: nothing is stored twice).
//
// "On disk" means fsync. A write only hands bytes to the kernel's page
// cache, which a power cut wipes; File.Sync returns once the disk has them.
// That takes a millisecond or more: one fsync per message would cap the
// server near a thousand messages a second. Group commit shares it: append
// only queues, and one goroutine, the committer, writes all that is queued,
// syncs once, then tells each record's appender, in append order. While it
// syncs, new appends gather for the next round, so the busier the server,
// the more records an fsync carries, and a lone message never waits for a
// timer.
//
// A crash during a write tears it: the file may end in part of a record, or
// in one with holes of zeros (a write's pages reach the disk in any order).
// A torn record was never synced, so no one heard of it: start-up drops it
// and cuts it off, so the next append starts clean. Damage elsewhere hits
// acknowledged records, where guessing would lose or invent history: so
// start-up stops with an error naming file and offset, and leaves the file.
// (A batch is one write, so on a file system that writes pages out of
// order a hole could land in a line before the last: that stops the start
// too, a false alarm, not a loss. ext4's default, data=ordered, grows the
// file only once its data is down: there a crash only cuts the tail.)
//
// A record is a line: the CRC-32C of its JSON in 8 hex digits, a space, the
// JSON (the new_message payload with the cid), a newline:
//
//	3f1a9c2e {"id":7,"room":"general","username":"alice","text":"hi",...}
//
// JSON is already the wire format, and old readers ignore new fields. JSON
// escapes control characters, so the newline alone frames a record: cat,
// grep and tail -f work, and a damaged byte spoils only its own line. The
// usual binary length prefix fails where it matters: one flipped bit in a
// length sends the reader into later records or past the end, where damage
// looks like a torn tail and good records would be cut away. The checksum
// tells a good line from a torn or rotten one (a flipped letter is still
// JSON). So a bad checksum on the last line is a torn tail where that line
// is cut short (no newline) or has a hole of zeros in it (JSON never holds a
// zero byte); on any other line, or on a whole last line, it is damage, as
// is a right checksum over a non-record anywhere.
//
// The file only grows, but rooms keep only their last -history messages:
// compact.go rewrites it with what they keep, once it has doubled.
//
// Two servers on one directory would mix their records, so the journal
// holds a flock on DIR/lock, which the kernel drops when the process ends (a
// crash leaves no stale lock). flock is Unix; Windows would need LockFileEx.
package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The files of a -data directory.
const (
	journalFile = "journal"     // the log itself
	journalNew  = "journal.new" // a compaction being written (truncated first)
	journalLock = "lock"        // flocked while a server owns the directory
)

// lockWait is how long a server waits for another to let go of the
// directory before it gives up.
const lockWait = time.Second

// compactFloor is the default minGrowth, in bytes: how far beyond twice its
// size after the last compaction the file may grow before it is compacted.
const compactFloor = 4 << 20

var (
	// castagnoli is the table of CRC-32C, the checksum of every record.
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	// errJournalClosed is what append answers once close has begun.
	errJournalClosed = errors.New("journal: closed")
	// errChecksum marks a line that may be torn: its checksum is not right.
	errChecksum = errors.New("checksum mismatch")
)

// record is a room message as the journal keeps it: chat.go's message,
// with its id, time and cid (the JSON of new_message).
type record = message

// pending is a queued append: the record, and whom to tell when it is on disk.
type pending struct {
	r       record
	written func(error)
}

// journal is an open -data directory: the log file, its lock, and the
// committer goroutine that alone writes to the file.
type journal struct {
	dir      string
	path     string          // dir/journal
	snapshot func() []record // the server's kept history, for compaction
	lock     *os.File        // flocked; closing it frees the directory

	// mu guards queue and closing, all that appenders touch. The committer
	// holds it only to take the queue, never during I/O.
	mu      sync.Mutex
	queue   []pending
	closing bool // close has begun: no more appends

	wake chan struct{} // "the queue has something" (or "closing"), buffered 1
	done chan struct{} // closed when the committer returns

	// Only the committer touches these once it runs.
	f          *os.File
	size       int64       // bytes in f
	compacted  int64       // bytes in f after the last compaction, or at open
	minGrowth  int64       // compactFloor; tests shrink it before their first append
	err        error       // the first I/O error, answered to every later append
	buf        []byte      // the batch being encoded, reused
	compacting *compaction // the compaction under way, or nil

	closeOnce sync.Once // close may be called more than once (main defers it)
	closeErr  error

	syncs       atomic.Int64 // fsyncs of batches: what group commit saves
	compactions atomic.Int64
}

// openJournal locks dir (creating it if needed), reads its journal back and
// starts the committer. history is, for each room, its last keep records,
// all sorted by id; since keep is at least 1, the last one carries the
// largest id on disk, and new ids must be larger. snapshot is called, on
// a goroutine of its own, to compact: it must return, in any order, every
// record the server still keeps of those already written (their callback
// called), and it may take the server's mutex. The server must append in
// the order of ids: then a snapshot never holds an id without every
// smaller one the server still keeps, which is what endCompaction needs.
func openJournal(dir string, keep int, snapshot func() []record) (j *journal, history []record, err error) {
	if keep < 1 {
		return nil, nil, fmt.Errorf("journal: keep is %d; it must be at least 1, since the newest record carries the ids across restarts", keep)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, nil, err
	}
	j = &journal{
		dir: dir, path: filepath.Join(dir, journalFile), snapshot: snapshot, lock: lock,
		wake: make(chan struct{}, 1), done: make(chan struct{}), minGrowth: compactFloor,
	}
	history, err = j.load(keep)
	if err != nil {
		j.f.Close() // a nil f (open failed) only answers ErrInvalid
		lock.Close()
		return nil, nil, err
	}
	go j.commit()
	return j, history, nil
}

// lockDir creates dir and takes the exclusive flock of dir/lock: a second
// server on the directory fails, after waiting lockWait for it.
func lockDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	name := filepath.Join(dir, journalLock)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	// A server that is being stopped (a restart) may hold the lock a
	// moment longer, and so may a child process being started, which holds
	// a copy of every file until it execs: wait up to lockWait for it.
	deadline := time.Now().Add(lockWait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("journal: %s is held by another server? (flock %s: %w)", dir, name, err)
		}
		time.Sleep(lockWait / 20)
	}
}

// load opens and reads the journal file, cuts off a torn tail and syncs the
// directory, for a file just created. A damaged file is only read.
func (j *journal) load(keep int) ([]record, error) {
	var err error
	j.f, err = os.OpenFile(j.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(j.path) // sized by stat: one read, no regrowing
	if err != nil {
		return nil, err
	}
	history, good, err := readJournal(j.path, data, keep)
	if err != nil {
		return nil, err
	}
	if good < int64(len(data)) { // a torn tail: cut it off
		if err := j.f.Truncate(good); err != nil {
			return nil, err
		}
	}
	if err := syncDir(j.dir); err != nil {
		return nil, err
	}
	j.size, j.compacted = good, good
	return history, nil
}

// readJournal parses a journal file's bytes (name is for errors): the last
// keep records of each room, sorted by id, and how many bytes are good; the
// rest is a torn tail. Damage before it is an error.
func readJournal(name string, data []byte, keep int) ([]record, int64, error) {
	all := make([]record, 0, bytes.Count(data, []byte{'\n'})) // in file order
	off := 0
	for off < len(data) {
		n := bytes.IndexByte(data[off:], '\n')
		if n < 0 {
			break // torn: the crash came before the newline
		}
		line := data[off : off+n]
		r, err := parseLine(line)
		last := off+n+1 == len(data)
		if errors.Is(err, errChecksum) && last && (n == 0 || bytes.IndexByte(line, 0) >= 0) {
			break // torn: the newline got to disk, some of the rest did not (or an empty line: nothing to lose)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("journal: %s is damaged at offset %d: %v", name, off, err)
		}
		all = append(all, r)
		off += n + 1
	}
	// By id (as the file is, unless a snapshot was not), then each room's
	// last keep, gathered in place from the newest back.
	slices.SortStableFunc(all, func(a, b record) int { return cmp.Compare(a.ID, b.ID) })
	perRoom, first := make(map[string]int), len(all)
	for i := len(all) - 1; i >= 0; i-- {
		if perRoom[all[i].Room]++; perRoom[all[i].Room] <= keep {
			first--
			all[first] = all[i]
		}
	}
	return all[first:], int64(off), nil
}

// parseLine checks one line (without its newline) and decodes its record.
// The error is errChecksum where the line may be torn.
func parseLine(line []byte) (record, error) {
	var r record
	if len(line) < 9 || line[8] != ' ' {
		return r, errChecksum
	}
	sum, err := strconv.ParseUint(string(line[:8]), 16, 32)
	payload := line[9:]
	if err != nil || uint32(sum) != crc32.Checksum(payload, castagnoli) {
		return r, errChecksum
	}
	if err := json.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("not a record: %v", err)
	}
	if r.ID <= 0 || r.Room == "" {
		return r, errors.New("not a record: no id or no room")
	}
	return r, nil
}

// appendRecord appends r to buf as one journal line.
func appendRecord(buf []byte, r record) []byte {
	payload, _ := json.Marshal(r) // strings and an int: it cannot fail
	buf = fmt.Appendf(buf, "%08x ", crc32.Checksum(payload, castagnoli))
	return append(append(buf, payload...), '\n')
}

// append queues r; it is cheap, so a caller may hold its own mutex. Once r
// is written and synced, the committer calls written(nil), or written(err)
// where the write failed, in the order the records were appended, each
// exactly once. The only error append returns is errJournalClosed, and
// then written is never called.
func (j *journal) append(r record, written func(error)) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closing {
		return errJournalClosed
	}
	j.queue = append(j.queue, pending{r, written})
	select {
	case j.wake <- struct{}{}:
	default: // the committer is already due to look
	}
	return nil
}

// commit is the committer goroutine: it writes each batch and tells its
// appenders, and begins and ends compactions between batches. It returns
// once the batch taken after close began is written, and the compaction
// under way, if any, has ended.
func (j *journal) commit() {
	defer close(j.done)
	for {
		closing := false
		select {
		case <-j.wake:
			letAppendersIn() // (speed.go)
			j.mu.Lock()
			batch := j.queue
			j.queue, closing = nil, j.closing
			j.mu.Unlock()
			j.write(batch)
		case <-j.compacting.written(): // (never, while none is under way)
		}
		if c := j.compacting; c != nil && (closing || isDone(c.done)) {
			<-c.done // at once, unless closing
			j.endCompaction()
		}
		if closing {
			return
		}
		if j.err == nil && j.compacting == nil && j.size > 2*j.compacted+j.minGrowth {
			j.beginCompaction()
		}
	}
}

// write appends a batch to the file with one write and one fsync, then
// tells each appender the outcome, in order. After an I/O error the
// journal stops for good: once an fsync has failed the kernel may have
// dropped the pages it could not write, so a retry could report success
// for data that is gone (PostgreSQL's "fsyncgate", 2018).
func (j *journal) write(batch []pending) {
	if len(batch) == 0 {
		return
	}
	if j.err == nil {
		j.buf = j.buf[:0]
		for _, p := range batch {
			j.buf = appendRecord(j.buf, p.r)
		}
		if _, err := j.f.Write(j.buf); err != nil {
			j.err = err
		} else if j.err = j.f.Sync(); j.err == nil {
			j.syncs.Add(1)
			j.size += int64(len(j.buf))
		}
	}
	if c := j.compacting; c != nil && j.err == nil {
		for _, p := range batch {
			c.missed = append(c.missed, p.r)
		}
	}
	for _, p := range batch {
		p.written(j.err)
	}
}

// syncDir fsyncs a directory, which makes the names created or renamed in
// it durable (syncing a file covers its contents, not its name).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// close writes what is queued, stops the committer and frees the
// directory. It answers the first I/O error the journal met, if any;
// closing again answers the same. Not with the server's mutex held: close
// waits for a compaction's snapshot, which takes it.
func (j *journal) close() error {
	j.closeOnce.Do(func() {
		j.mu.Lock()
		j.closing = true
		j.mu.Unlock()
		select {
		case j.wake <- struct{}{}:
		default:
		}
		<-j.done
		j.closeErr = cmp.Or(j.err, j.f.Close()) // the first error; the file is closed either way
		j.lock.Close()                          // releases the flock
	})
	return j.closeErr
}
