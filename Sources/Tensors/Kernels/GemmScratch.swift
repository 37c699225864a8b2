#if canImport(Glibc)
import Glibc
#endif

/// GEMM's pack buffers, one growing block per thread: a call used to allocate and free up to 2 MiB
/// (B's slab), which glibc may serve by mmap, i.e. page faults on every call. Threads never share one
/// (ranks time layouts on several threads at once); the block is freed when its thread exits.
final class GemmScratch {
    private var floats: UnsafeMutablePointer<Float>
    private var capacity: Int

    private init() {
        capacity = 0
        floats = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    }

    deinit { floats.deallocate() }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        let status = pthread_key_create(&key) { block in
            if let block { Unmanaged<GemmScratch>.fromOpaque(block).release() }
        }
        precondition(status == 0, "pthread_key_create failed: \(status)")
        return key
    }()

    /// At least `count` floats, 64-byte aligned, valid until this thread's next call.
    static func forThisThread(floats count: Int) -> UnsafeMutablePointer<Float> {
        let scratch: GemmScratch
        if let block = pthread_getspecific(key) {
            scratch = Unmanaged<GemmScratch>.fromOpaque(block).takeUnretainedValue()
        } else {
            scratch = GemmScratch()
            pthread_setspecific(key, Unmanaged.passRetained(scratch).toOpaque())
        }
        if scratch.capacity < count {
            scratch.floats.deallocate()
            scratch.floats = UnsafeMutableRawPointer.allocate(byteCount: count * 4, alignment: 64)
                .bindMemory(to: Float.self, capacity: count)
            scratch.capacity = count
        }
        return scratch.floats
    }
}
