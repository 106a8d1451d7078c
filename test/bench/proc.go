package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/test/proc"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procStat is what /proc/<pid>/stat says of one process.
type procStat struct {
	ppid     int
	cpu      time.Duration // utime + stime
	children time.Duration // cutime + cstime: children it has waited for
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name is in parentheses and may hold spaces and parentheses;
	// the fields after the last ")" start with the state (field 3).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	num := func(k int) int64 { v, _ := strconv.ParseInt(f[k], 10, 64); return v }
	tick := func(v int64) time.Duration { return time.Duration(v) * time.Second / clockTicks }
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
	return procStat{
		ppid:     int(num(1)),
		cpu:      tick(num(11) + num(12)),
		children: tick(num(13) + num(14)),
	}, nil
}

// memStatus reads VmRSS and VmHWM of pid in bytes.
func memStatus(pid int) (rss, hwm int64, err error) { return proc.Mem(pid) }

// hostCPU reads the busy and total CPU time of the whole machine (all CPUs)
// from the first line of /proc/stat.
func hostCPU() (busy, total time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	var sum, idle int64
	for k, s := range f[1:] {
		if k >= 8 { // guest and guest_nice are already in user and nice
			break
		}
		v, _ := strconv.ParseInt(s, 10, 64)
		sum += v
		if k == 3 || k == 4 { // idle, iowait
			idle += v
		}
	}
	tick := func(v int64) time.Duration { return time.Duration(v) * time.Second / clockTicks }
	return tick(sum - idle), tick(sum)
}

// listenerPID returns the process listening on TCP port on this machine, or 0
// when none can be found (not local, or not permitted to look).
func listenerPID(port int) int {
	inodes := map[string]bool{}
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for i, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if i == 0 || len(f) < 10 || f[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(f[1], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 32); ok && err == nil && int(p) == port {
				inodes["socket:["+f[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0
	}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && inodes[target] {
			pid, _ := strconv.Atoi(strings.Split(fd, "/")[2])
			return pid
		}
	}
	return 0
}

// treeCPU is the CPU time of pid and of all its children, live or waited for
// (a PostgreSQL server: the postmaster and its backends).
func treeCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	root, err := readStat(pid)
	if err != nil {
		return 0
	}
	total := root.cpu + root.children
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		child, err := strconv.Atoi(filepath.Base(d))
		if err != nil || child == pid {
			continue
		}
		if st, err := readStat(child); err == nil && st.ppid == pid {
			total += st.cpu
		}
	}
	return total
}

// watcher samples the CPU time of the machine, the PostgreSQL server and the
// Kafka broker, so that every timed phase reports where the CPU went.
type watcher struct {
	pgPID, kafkaPID int
}

type cpuSample struct {
	at                time.Time
	hostBusy, hostAll time.Duration
	pg, kafka         time.Duration
}

// phaseCPU is the CPU the machine, PostgreSQL and Kafka used during a phase.
type phaseCPU struct {
	wall              time.Duration
	hostBusy, hostAll time.Duration
	pg, kafka         time.Duration
}

func (w *watcher) sample() cpuSample {
	s := cpuSample{at: time.Now(), pg: treeCPU(w.pgPID), kafka: treeCPU(w.kafkaPID)}
	s.hostBusy, s.hostAll = hostCPU()
	return s
}

func (w *watcher) since(s cpuSample) phaseCPU {
	e := w.sample()
	return phaseCPU{wall: e.at.Sub(s.at), hostBusy: e.hostBusy - s.hostBusy, hostAll: e.hostAll - s.hostAll,
		pg: e.pg - s.pg, kafka: e.kafka - s.kafka}
}

// hostBusyShare is the share of the machine's CPU time that was busy.
func (p phaseCPU) hostBusyShare() float64 {
	if p.hostAll <= 0 {
		return 0
	}
	return float64(p.hostBusy) / float64(p.hostAll)
}
