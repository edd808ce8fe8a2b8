package wire

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestTailLogKeepsTheLastLinesWithinBounds(t *testing.T) {
	var b strings.Builder
	for i := range 80 {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	got := TailLog(b.String())
	lines := strings.Split(got, "\n")
	require.Len(t, lines, LogTailLines)
	require.Equal(t, "line 30", lines[0])
	require.Equal(t, "line 79", lines[len(lines)-1])

	long := strings.Repeat(strings.Repeat("é", 60)+"\n", 50) // 50 lines of 121 bytes
	got = TailLog(long)
	require.LessOrEqual(t, len(got), LogTailBytes)
	require.True(t, strings.HasPrefix(got, "é"), "cut at a line boundary")

	one := strings.Repeat("é", 5000) // one line longer than the bound
	got = TailLog(one)
	require.LessOrEqual(t, len(got), LogTailBytes)
	require.True(t, utf8.ValidString(got))
	require.Empty(t, TailLog(""))
}
