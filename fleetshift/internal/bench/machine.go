package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Machine describes where a run happened, so a reader can judge and reproduce the figures.
type Machine struct {
	Cores       int
	CPUModel    string
	MemoryBytes int64
	OS          string
	GoVersion   string
	PostgreSQL  string
	NATS        string
	// Layout says how server and load generators share the cores.
	Layout string
}

// String renders the machine on one line.
func (m Machine) String() string {
	parts := []string{fmt.Sprintf("%d cores", m.Cores)}
	if m.CPUModel != "" {
		parts[0] += " (" + m.CPUModel + ")"
	}
	if m.MemoryBytes > 0 {
		parts = append(parts, fmt.Sprintf("%.1f GiB memory", float64(m.MemoryBytes)/(1<<30)))
	}
	for _, p := range []string{m.OS, m.GoVersion, m.PostgreSQL, m.NATS, m.Layout} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, ", ")
}

// LocalMachine describes this machine; PostgreSQL and NATS versions are filled in by the caller.
func LocalMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), OS: runtime.GOOS + "/" + runtime.GOARCH, GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemoryBytes = ParseMeminfo(b)
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// ParseMeminfo returns MemTotal in bytes from /proc/meminfo content, or 0.
func ParseMeminfo(b []byte) int64 {
	return procField(b, "MemTotal")
}

// ProcStatus is the memory of a process as /proc/<pid>/status reports it.
type ProcStatus struct {
	// RSS is the resident set size now; PeakRSS the high-water mark since the process started.
	RSS, PeakRSS int64
}

// ParseProcStatus reads VmRSS and VmHWM (in bytes) from /proc/<pid>/status content.
func ParseProcStatus(b []byte) ProcStatus {
	return ProcStatus{RSS: procField(b, "VmRSS"), PeakRSS: procField(b, "VmHWM")}
}

// ReadProcStatus reads the memory figures of process pid.
func ReadProcStatus(pid int) (ProcStatus, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcStatus{}, fmt.Errorf("read memory of process %d: %w", pid, err)
	}
	return ParseProcStatus(b), nil
}

// procField parses a "Name:   1234 kB" line of a /proc file into bytes.
func procField(b []byte, name string) int64 {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != name {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return 0
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0
		}
		if len(f) > 1 && strings.EqualFold(f[1], "kB") {
			n *= 1024
		}
		return n
	}
	return 0
}
