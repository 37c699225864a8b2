import Glibc
import Tensors
import XCTest

final class AllocatorTests: XCTestCase {
    /// The checkpoint assembly's pattern: a large block freed, then a smaller one allocated, written and
    /// freed. With the threshold fixed the second block is mapped on its own and unmapped when freed;
    /// glibc's moving threshold would take it from the heap, where it stays resident once freed.
    /// Counted with glibc's own figure for mapped blocks, not the process's resident size: the kernel's
    /// RSS counters are cached per task or CPU and lag (a CI machine read no growth at all while 12 MiB
    /// were written).
    func testFreedLargeBuffersAreMappedAndGoBackToTheKernel() throws {
        fixAllocatorThresholds()
        try XCTSkipIf(getenv("MALLOC_MMAP_THRESHOLD_") != nil, "the user's threshold is left as set")
        do { let first = FloatBuffer(count: 4 << 20); XCTAssertEqual(first.base[first.count - 1], 0) }
        let before = allocatorMappedBytes()
        do {
            let second = FloatBuffer(count: 3 << 20)
            second.buffer.update(repeating: 1)
            XCTAssertGreaterThanOrEqual(allocatorMappedBytes() - before, 12 << 20,
                                        "the 12 MiB buffer is a block of its own, not taken from the heap")
        }
        XCTAssertEqual(allocatorMappedBytes(), before, "the freed 12 MiB went back to the kernel")
    }
}
