//go:build linux

package file_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/sink/file"
	"github.com/sluicehq/sluice/internal/sink/sinktest"
)

// TestConformance runs the sink conformance suite against the file sink in a
// temporary directory.
//
// The file sink refuses no record for its content, so the partial-failure case
// is skipped; and a write is one write(2) to a local file, which nothing
// outside can hold in flight, so the shutdown case is skipped too. A failure
// is the process's file size limit (RLIMIT_FSIZE) lowered to the file's size:
// the next write fails with EFBIG, as a full disk fails with ENOSPC, until the
// limit is restored. The limit is the whole process's: no test of this
// package may write files in parallel with this one (none calls t.Parallel).
func TestConformance(t *testing.T) {
	sinktest.Run(t, sinktest.Harness{
		Delivery: sinktest.Once,
		New: func(t *testing.T) *sinktest.Instance {
			path := filepath.Join(t.TempDir(), "out.jsonl")
			s, err := file.New(config.File{Path: path})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			return &sinktest.Instance{
				Sink: s, Mapper: s,
				Stored: func(t *testing.T) []sinktest.Stored { return storedLines(t, path) },
				Fail: func(t *testing.T) func() {
					st, err := os.Stat(path)
					if err != nil {
						t.Fatal(err)
					}
					var old syscall.Rlimit
					if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
						t.Skip("cannot read RLIMIT_FSIZE:", err)
					}
					lowered := old
					lowered.Cur = uint64(st.Size())
					if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lowered); err != nil {
						t.Skip("cannot lower RLIMIT_FSIZE:", err)
					}
					var once sync.Once
					restore := func() {
						once.Do(func() {
							if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
								panic("restore RLIMIT_FSIZE: " + err.Error()) // every later file write of the process would fail
							}
						})
					}
					t.Cleanup(restore)
					return restore
				},
			}
		},
	})
}

// storedLines reads the file back; a torn last line fails the test.
func storedLines(t *testing.T, path string) []sinktest.Stored {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Fatalf("%s ends in a torn line: %q", path, data[bytes.LastIndexByte(data, '\n')+1:])
	}
	var out []sinktest.Stored
	for i, line := range bytes.Split(bytes.TrimSuffix(data, []byte{'\n'}), []byte{'\n'}) {
		if len(line) == 0 {
			continue
		}
		var l struct {
			Topic     string
			Partition int32
			Offset    int64
			Value     struct{ ID int64 }
		}
		if err := json.Unmarshal(line, &l); err != nil || l.Topic != sinktest.Topic {
			t.Fatalf("line %d of %s is not a record of the suite (%v): %s", i+1, path, err, line)
		}
		out = append(out, sinktest.Stored{Partition: l.Partition, Offset: l.Offset, ID: l.Value.ID})
	}
	return out
}
