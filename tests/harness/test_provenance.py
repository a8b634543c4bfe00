"""Provenance names the CPU precisely enough to tell why a run does not reproduce bit for bit."""

from petlbench.harness.provenance import cpu_details, hardware

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_bf16
processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_bf16
"""


def test_cpu_details_reads_the_model_and_the_kernel_picking_flags():
    assert cpu_details(CPUINFO) == {
        "model": "AMD EPYC 9R14",
        "simd": ["avx2", "avx512f", "avx512_bf16", "fma"],
    }
    assert cpu_details("processor\t: 0\nflags\t\t: sse2\n") == {"simd": []}


def test_hardware_carries_the_cpu_details_of_this_machine():
    info = hardware()
    assert set(cpu_details()) <= {k.removeprefix("cpu_") for k in info}
    assert info["cpu_count"] >= 1
