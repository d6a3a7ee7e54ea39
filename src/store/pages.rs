//! A global allocator that asks for transparent huge pages for big blocks.
//!
//! Why: with millions of items the index's bucket arrays (one per dashmap shard,
//! tens of MB each at 10 M keys) are read at random addresses, and on 4 KB pages
//! nearly every lookup also misses the TLB. Debian's default THP mode is
//! `madvise`, so huge pages only back memory that asks for them. Blocks of at
//! least [`MIN_ADVISED`] bytes get `madvise(MADV_HUGEPAGE)` on their 2 MB-aligned
//! interior right after allocation; everything else is the system allocator
//! unchanged. The advice is a hint: where THP is `never` it does nothing, and
//! its failure is ignored.

use std::alloc::{GlobalAlloc, Layout, System};

const HUGE_PAGE: usize = 2 << 20;
/// Only blocks of at least this size are advised (a few per index resize).
pub const MIN_ADVISED: usize = 2 * HUGE_PAGE;

pub struct HugePageAdvisingAlloc;

/// Advise `ptr`'s block if it is big enough; returns `ptr`.
fn advised(ptr: *mut u8, len: usize) -> *mut u8 {
    if len >= MIN_ADVISED && !ptr.is_null() {
        advise(ptr, len);
    }
    ptr
}

fn advise(ptr: *mut u8, len: usize) {
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize + len) & !(HUGE_PAGE - 1);
    if end > start {
        // SAFETY: [start, end) lies inside a block we just allocated; madvise
        // with MADV_HUGEPAGE changes no contents and no mapping permissions.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments; the
// only addition is advice on memory the returned block owns.
unsafe impl GlobalAlloc for HugePageAdvisingAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        advised(unsafe { System.alloc(layout) }, layout.size())
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        advised(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        advised(unsafe { System.realloc(ptr, layout, new_size) }, new_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` line of the mapping in /proc/self/smaps that holds `addr`.
    fn vm_flags_of(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.to_string());
                }
            }
        }
        None
    }

    /// Kernels built without THP refuse the advice; there is nothing to check.
    fn thp_available() -> bool {
        std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists()
    }

    #[test]
    fn big_blocks_are_advised_and_keep_their_contents() {
        let a = HugePageAdvisingAlloc;
        let thp = thp_available();
        let size = MIN_ADVISED + HUGE_PAGE + 12345;
        let layout = Layout::from_size_align(size, 64).expect("layout");
        // SAFETY: layout has a non-zero size; the block is written only inside
        // its size and freed once with the layout it was allocated with.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            for i in (0..size).step_by(4096) {
                *p.add(i) = (i / 4096) as u8;
            }
            let inner = (p as usize).next_multiple_of(HUGE_PAGE);
            let flags = vm_flags_of(inner).expect("mapping in smaps");
            assert!(
                !thp || flags.split_whitespace().any(|f| f == "hg"),
                "not advised: {flags}"
            );

            let bigger = size * 2;
            let q = a.realloc(p, layout, bigger);
            assert!(!q.is_null());
            for i in (0..size).step_by(4096) {
                assert_eq!(*q.add(i), (i / 4096) as u8, "byte {i} after realloc");
            }
            let inner = (q as usize).next_multiple_of(HUGE_PAGE);
            let flags = vm_flags_of(inner).expect("mapping in smaps");
            assert!(
                !thp || flags.split_whitespace().any(|f| f == "hg"),
                "not advised after realloc: {flags}"
            );
            a.dealloc(q, Layout::from_size_align(bigger, 64).expect("layout"));
        }
    }

    #[test]
    fn small_blocks_are_plain_system_blocks() {
        let a = HugePageAdvisingAlloc;
        let layout = Layout::from_size_align(100, 8).expect("layout");
        // SAFETY: as above.
        unsafe {
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert!((0..100).all(|i| *p.add(i) == 0));
            a.dealloc(p, layout);
        }
    }
}
