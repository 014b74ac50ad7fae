// Mapping the pages of a large output in batches just ahead of the kernel's writes.
// Included before any instruction-set pragma (csrc/vec_prelude.h), so it is baseline code.
//
// A large output comes from a fresh anonymous mapping (glibc's malloc maps anything from
// 32 MiB up on its own; smaller sizes up to that threshold may also be fresh): each of
// its 4 KiB pages costs a page fault on first write, in which the kernel zeroes the page,
// and then the kernel's own write of the same page. madvise(MADV_POPULATE_WRITE) (Linux
// 5.14) maps many pages in one call, and done a few pages ahead of the writes the zeroed
// pages are still in cache when the kernel overwrites them. Writing a fresh 335 MB
// buffer (memset, one thread, process CPU time, Xeon with AVX-512): 138 ms page by page,
// 105 ms populated in one call before the writes, 84-92 ms populated 16-256 KiB at a time
// just before each part is written. Where the call is unknown or fails, the pages fault
// as before.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define VSC_HAVE_POPULATE_WRITE 1
#endif

namespace vsc {

// Outputs smaller than this are written as they are: they may come from malloc's heap,
// already mapped, where the call would only walk the page tables.
constexpr int64_t kPrefaultMinBytes = int64_t{32} << 20;
// Bytes mapped per call at least.
constexpr int64_t kPrefaultStep = int64_t{64} << 10;

// One thread's part [begin, end) of an output, written front to back: before(p) maps
// the pages wholly inside that part up to p (and kPrefaultStep beyond the last call's
// end at least). The partial pages at either end fault as usual.
class WritePrefault {
 public:
  WritePrefault(const void* begin, const void* end, bool enable) {
#if defined(VSC_HAVE_POPULATE_WRITE)
    static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t b = reinterpret_cast<uintptr_t>(begin);
    const uintptr_t e = reinterpret_cast<uintptr_t>(end);
    next_ = (b + page - 1) / page * page;
    end_ = e / page * page;
    page_ = page;
    if (!enable || next_ >= end_) next_ = kDone;
#else
    (void)begin;
    (void)end;
    (void)enable;
#endif
  }

  // Call before writing any byte below p.
  void before(const void* p) {
    if (reinterpret_cast<uintptr_t>(p) > next_) advance(reinterpret_cast<uintptr_t>(p));
  }

 private:
  void advance(uintptr_t p) {
#if defined(VSC_HAVE_POPULATE_WRITE)
    uintptr_t target = std::max((p + page_ - 1) / page_ * page_,
                                next_ + static_cast<uintptr_t>(kPrefaultStep));
    target = std::min(target, end_);
    if (madvise(reinterpret_cast<void*>(next_), target - next_, MADV_POPULATE_WRITE) != 0) {
      target = end_;  // unsupported here (or failed): leave the rest to page faults
    }
    next_ = target < end_ ? target : kDone;
#else
    (void)p;
#endif
  }

  static constexpr uintptr_t kDone = ~uintptr_t{0};  // nothing left to map
  uintptr_t next_ = kDone, end_ = 0, page_ = 4096;
};

}  // namespace vsc
