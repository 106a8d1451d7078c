package consumer

import "github.com/twmb/franz-go/pkg/kgo"

// tracker keeps one partition's admitted records in poll order and the commit
// position: the offset after the longest prefix of records that are done.
// Records may finish in any order; the position only moves over a contiguous
// done prefix, so a commit never skips a record. Offsets need not be dense
// (transaction markers leave gaps): the position is the last done offset + 1.
//
// A tracker is not safe for concurrent use; Consumer guards it with its mutex.
type tracker struct {
	entries []entry // entries[head:] are outstanding or done-but-not-prefix
	head    int
	base    uint64 // sequence number of entries[head]
	next    uint64 // sequence number of the next add

	pos   kgo.EpochOffset // the commit position, valid when known
	known bool
	dirty bool // pos moved since the last commit
}

type entry struct {
	offset int64
	ts     int64 // the record's timestamp in Unix nanoseconds, for consumer_lag_seconds
	epoch  int32
	done   bool
}

// add records an admitted record with its timestamp (Unix nanoseconds) and
// returns its sequence number.
func (t *tracker) add(offset int64, epoch int32, ts int64) uint64 {
	if t.head == len(t.entries) {
		// Everything is done: restart at the front of the slice.
		t.entries, t.head = t.entries[:0], 0
	}
	t.entries = append(t.entries, entry{offset: offset, ts: ts, epoch: epoch})
	s := t.next
	t.next++
	return s
}

// done marks the record with sequence number seq done and advances the
// position over the done prefix. Unknown or repeated sequence numbers are
// ignored.
func (t *tracker) done(seq uint64) {
	if seq < t.base || seq >= t.next {
		return
	}
	t.entries[t.head+int(seq-t.base)].done = true
	for t.head < len(t.entries) && t.entries[t.head].done {
		e := t.entries[t.head]
		t.pos = kgo.EpochOffset{Epoch: e.epoch, Offset: e.offset + 1}
		t.known, t.dirty = true, true
		t.head++
		t.base++
	}
	if t.head > 4096 && t.head*2 > len(t.entries) {
		n := copy(t.entries, t.entries[t.head:])
		t.entries, t.head = t.entries[:n], 0
	}
}

// seek sets the position of a tracker with no admitted record to offset,
// which the offset store holds (exactly-once): everything before it is done,
// and a partition with no new record commits it, so that its lag counts from
// there.
func (t *tracker) seek(offset int64) {
	if t.head != len(t.entries) {
		return
	}
	t.pos = kgo.EpochOffset{Epoch: -1, Offset: offset}
	t.known, t.dirty = true, true
}

// first returns the offset of the oldest admitted record that is not done,
// and false when every admitted record is done.
func (t *tracker) first() (int64, bool) {
	if t.head == len(t.entries) {
		return 0, false
	}
	return t.entries[t.head].offset, true
}

// outstanding returns how many admitted records are not yet behind the position.
func (t *tracker) outstanding() int { return len(t.entries) - t.head }

// oldest returns the timestamp (Unix nanoseconds) of the oldest admitted record
// that is not done, and false when every admitted record is done. That record
// is the head entry: the position stops in front of it.
func (t *tracker) oldest() (int64, bool) {
	if t.head == len(t.entries) {
		return 0, false
	}
	return t.entries[t.head].ts, true
}
