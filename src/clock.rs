//! The hot path's clock: monotonic nanoseconds in a `u64`.
//!
//! A [`Tick`] is an `Instant` taken as nanoseconds since the first one the process read: 8
//! bytes, and it subtracts with plain integer arithmetic. A query is timed, checked against
//! idle and lifetime limits and fed to the N+1 detector, so its path compares and subtracts
//! times several times; with `Instant` each of those normalizes a `timespec`. Reading the
//! clock reads CLOCK_MONOTONIC (the clock `Instant` reads on Linux) straight into
//! nanoseconds, once per turn of a session (more often when the turn waits for a server).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A point in monotonic time, in nanoseconds since the process first read the clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(u64);

impl Tick {
    /// Now.
    pub fn now() -> Tick {
        Tick(monotonic_ns().saturating_sub(base().1))
    }

    /// The tick of `i` (zero for an instant before the process's first reading).
    pub fn of(i: Instant) -> Tick {
        let d = i.saturating_duration_since(base().0);
        Tick(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The time from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// The same moment as a tokio `Instant`, for timers.
    pub fn to_instant(self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(base().0 + Duration::from_nanos(self.0))
    }

    /// The same moment in microseconds since the UNIX epoch, for the times the console shows
    /// and the idle times compared against them ([`crate::app::registry::now_us`] reads this
    /// too). The offset between the two clocks is taken once: a later step of the system
    /// clock does not show here, so the interval between two readings is always true (mixing
    /// this with `SystemTime` readings would let a step stop idle clients from parking, or
    /// park them at once).
    pub fn wall_us(self) -> u64 {
        static BASE_US: OnceLock<u64> = OnceLock::new();
        let at_base = *BASE_US.get_or_init(|| {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
            wall.saturating_sub(Tick::now().0 / 1000)
        });
        at_base.saturating_add(self.0 / 1000)
    }
}

/// The instant ticks count from, and the same moment in [`monotonic_ns`].
fn base() -> &'static (Instant, u64) {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    BASE.get_or_init(|| (Instant::now(), monotonic_ns()))
}

/// CLOCK_MONOTONIC in nanoseconds (through the vDSO, without `Instant`'s `timespec`
/// arithmetic: about a third of the instructions of `Instant::now` plus a subtraction).
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// `d` later (saturating, unlike `Instant`, which panics on overflow).
impl std::ops::Add<Duration> for Tick {
    type Output = Tick;

    fn add(self, d: Duration) -> Tick {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Tick(self.0.saturating_add(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_instant_and_the_wall_clock() {
        let (t0, i0) = (Tick::now(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, i1) = (Tick::now(), Instant::now());
        let by_tick = t1.since(t0);
        let by_instant = i1.duration_since(i0);
        assert!(by_tick >= Duration::from_millis(20), "{by_tick:?}");
        let skew = by_tick.abs_diff(by_instant);
        assert!(
            skew < Duration::from_millis(5),
            "{by_tick:?} vs {by_instant:?}"
        );
        assert_eq!(t0.since(t1), Duration::ZERO);
        // Ticks read from the clock and made from an `Instant` agree.
        let (i2, t2, i3) = (Instant::now(), Tick::now(), Instant::now());
        assert!(
            Tick::of(i2) <= t2 + Duration::from_micros(100),
            "{t2:?} vs {i2:?}"
        );
        assert!(
            t2 <= Tick::of(i3) + Duration::from_micros(100),
            "{t2:?} vs {i3:?}"
        );
        assert_eq!(t0 + by_tick, t1);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        assert!(
            t1.wall_us().abs_diff(wall) < 1_000_000,
            "{} vs {wall}",
            t1.wall_us()
        );
        let later = (t1 + Duration::from_secs(10)).to_instant();
        let left = later - tokio::time::Instant::now();
        assert!(
            left > Duration::from_secs(9) && left <= Duration::from_secs(10),
            "{left:?}"
        );
    }
}
