// Package window computes maintenance windows: a daily span of local time-of-day in a time zone, such as
// 22:00-04:00 Europe/Berlin, which may cross midnight. A scheduled rollout dispatches only inside it.
package window

import (
	"fmt"
	"strings"
	"time"
)

// Window is a daily local-time span [Start, End). Start == End means the whole day.
type Window struct {
	Start, End time.Duration // offsets from local midnight
	Loc        *time.Location
}

// Parse builds a window from "HH:MM" (or "HH:MM:SS") times and an IANA zone name ("" = UTC).
func Parse(start, end, zone string) (Window, error) {
	s, err := clock(start)
	if err != nil {
		return Window{}, fmt.Errorf("maintenance_window_start: %w", err)
	}
	e, err := clock(end)
	if err != nil {
		return Window{}, fmt.Errorf("maintenance_window_end: %w", err)
	}
	loc := time.UTC
	if zone != "" {
		if loc, err = time.LoadLocation(zone); err != nil {
			return Window{}, fmt.Errorf("timezone %q: unknown zone", zone)
		}
	}
	return Window{Start: s, End: e, Loc: loc}, nil
}

func clock(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	for _, layout := range []string{"15:04", "15:04:05"} {
		if t, err := time.Parse(layout, s); err == nil {
			return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute + time.Duration(t.Second())*time.Second, nil
		}
	}
	return 0, fmt.Errorf("%q is not a time of day (HH:MM)", s)
}

// midnight returns local midnight of the day containing t, and the offset of t from it in local
// wall-clock time (so a window "02:00-03:00" means the wall clock, across DST changes).
func (w Window) midnight(t time.Time) (time.Time, time.Duration) {
	lt := t.In(w.Loc)
	y, m, d := lt.Date()
	mid := time.Date(y, m, d, 0, 0, 0, 0, w.Loc)
	wall := time.Duration(lt.Hour())*time.Hour + time.Duration(lt.Minute())*time.Minute +
		time.Duration(lt.Second())*time.Second + time.Duration(lt.Nanosecond())
	return mid, wall
}

// Contains reports whether t is inside the window.
func (w Window) Contains(t time.Time) bool {
	if w.Start == w.End {
		return true
	}
	_, wall := w.midnight(t)
	if w.Start < w.End {
		return wall >= w.Start && wall < w.End
	}
	return wall >= w.Start || wall < w.End // crosses midnight
}

// at returns the instant of local wall time off on the day whose midnight is mid.
func (w Window) at(mid time.Time, off time.Duration) time.Time {
	y, m, d := mid.Date()
	h := int(off / time.Hour)
	min := int(off % time.Hour / time.Minute)
	s := int(off % time.Minute / time.Second)
	return time.Date(y, m, d, h, min, s, 0, w.Loc)
}

// NextOpen returns t when t is inside the window, else the next instant the window opens.
func (w Window) NextOpen(t time.Time) time.Time {
	if w.Contains(t) {
		return t
	}
	mid, wall := w.midnight(t)
	if wall < w.Start {
		return w.at(mid, w.Start)
	}
	y, m, d := mid.Date()
	return w.at(time.Date(y, m, d+1, 0, 0, 0, 0, w.Loc), w.Start)
}

// CloseAfter returns when the window that contains t closes (t itself when t is outside it). A
// whole-day window never closes: the zero time.
func (w Window) CloseAfter(t time.Time) time.Time {
	if w.Start == w.End {
		return time.Time{}
	}
	if !w.Contains(t) {
		return t
	}
	mid, wall := w.midnight(t)
	y, m, d := mid.Date()
	if w.Start < w.End || wall >= w.Start {
		if w.Start > w.End { // crossed midnight: closes tomorrow
			return w.at(time.Date(y, m, d+1, 0, 0, 0, 0, w.Loc), w.End)
		}
		return w.at(mid, w.End)
	}
	return w.at(mid, w.End) // after midnight part of a crossing window
}
