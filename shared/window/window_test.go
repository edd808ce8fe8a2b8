package window

import (
	"testing"
	"time"
)

func mustParse(t *testing.T, s, e, z string) Window {
	t.Helper()
	w, err := Parse(s, e, z)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func TestContainsAndNextOpen(t *testing.T) {
	t.Parallel()
	berlin, _ := time.LoadLocation("Europe/Berlin")
	at := func(s string) time.Time {
		tt, err := time.ParseInLocation("2006-01-02 15:04", s, berlin)
		if err != nil {
			t.Fatal(err)
		}
		return tt
	}
	night := mustParse(t, "22:00", "04:00", "Europe/Berlin") // crosses midnight
	day := mustParse(t, "09:30", "17:00", "Europe/Berlin")
	cases := []struct {
		w        Window
		now      string
		inside   bool
		nextOpen string
		closes   string
	}{
		{night, "2026-11-27 21:59", false, "2026-11-27 22:00", ""},
		{night, "2026-11-27 22:00", true, "2026-11-27 22:00", "2026-11-28 04:00"},
		{night, "2026-11-28 01:30", true, "2026-11-28 01:30", "2026-11-28 04:00"},
		{night, "2026-11-28 04:00", false, "2026-11-28 22:00", ""},
		{night, "2026-11-28 12:00", false, "2026-11-28 22:00", ""},
		{day, "2026-11-27 08:00", false, "2026-11-27 09:30", ""},
		{day, "2026-11-27 12:00", true, "2026-11-27 12:00", "2026-11-27 17:00"},
		{day, "2026-11-27 17:00", false, "2026-11-28 09:30", ""},
		// Across the spring DST change (2026-03-29 02:00 -> 03:00 in Berlin), the wall clock rules.
		{night, "2026-03-29 03:30", true, "2026-03-29 03:30", "2026-03-29 04:00"},
		{day, "2026-03-28 18:00", false, "2026-03-29 09:30", ""},
	}
	for _, c := range cases {
		now := at(c.now)
		if got := c.w.Contains(now); got != c.inside {
			t.Errorf("%v Contains(%s) = %v", c.w, c.now, got)
		}
		if got := c.w.NextOpen(now); !got.Equal(at(c.nextOpen)) {
			t.Errorf("NextOpen(%s) = %s, want %s", c.now, got.In(berlin), c.nextOpen)
		}
		if c.closes != "" {
			if got := c.w.CloseAfter(now); !got.Equal(at(c.closes)) {
				t.Errorf("CloseAfter(%s) = %s, want %s", c.now, got.In(berlin), c.closes)
			}
		}
	}
	// The same instant in UTC: 21:30 UTC is 22:30 in Berlin (winter), inside the night window.
	if !night.Contains(time.Date(2026, 11, 27, 21, 30, 0, 0, time.UTC)) {
		t.Error("zone not applied")
	}
	all := mustParse(t, "00:00", "00:00", "")
	if !all.Contains(time.Now()) || !all.CloseAfter(time.Now()).IsZero() {
		t.Error("equal start and end must mean the whole day")
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for _, c := range [][3]string{{"25:00", "01:00", ""}, {"10:00", "x", ""}, {"10:00", "11:00", "Mars/Base"}} {
		if _, err := Parse(c[0], c[1], c[2]); err == nil {
			t.Errorf("Parse(%q) accepted", c)
		}
	}
}
