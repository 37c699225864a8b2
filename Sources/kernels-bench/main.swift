import Tensors
import Glibc

func now() -> Double { var ts = timespec(); clock_gettime(CLOCK_MONOTONIC, &ts); return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9 }
for (m, k, n) in [(256,256,256),(512,512,512),(1024,1024,1024),(768,128,512),(768,512,128)] {
  for kernel in GemmMicroKernel.allCases {
    let a = Tensor(zeros: [m*k]), b = Tensor(zeros: [k*n]), c = Tensor(zeros: [m*n])
    for i in 0..<a.count { a[i] = Float(i % 7) * 0.1 }
    for i in 0..<b.count { b[i] = Float(i % 5) * 0.1 }
    gemm(.none, .none, m: m, n: n, k: k, a: a.data, b: b.data, c: c.data, kernel: kernel)
    var best = 1e9
    for _ in 0..<5 { let t = now(); for _ in 0..<3 { gemm(.none, .none, m: m, n: n, k: k, a: a.data, b: b.data, c: c.data, kernel: kernel) }; best = min(best, (now()-t)/3) }
    print(m, k, n, kernel, 2.0*Double(m*n*k)/best/1e9)
  }
}
