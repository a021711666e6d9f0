"""Turn a .cu file into C++ for cudasim: the two constructs a host compiler cannot take.

    kernel<<<grid, block, shared, stream>>>(args)
        -> ::gfsim::launch(kernel, ::gfsim::config(grid, block, shared, stream), args)
    cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), ...)
        -> cudaLaunchCooperativeKernel(kernel, ...)   (cudasim needs the kernel's type)

Everything else compiles as written, against tools/cudasim/include. A `#line` directive
keeps compiler messages and debuggers pointing at the original file.

Usage: rewrite_launches.py IN.cu OUT.cpp
"""
import re
import sys

_COOPERATIVE = re.compile(
    r"cudaLaunchCooperativeKernel\(\s*reinterpret_cast<const void\s*\*>\(\s*([\w:<>, ]+?)\s*\)")


def _kernel_start(src: str, end: int) -> int:
    """Start of the kernel expression that ends at src[end] (exclusive): an identifier,
    possibly qualified, possibly followed by template arguments."""
    i = end
    while True:
        while i > 0 and src[i - 1].isspace():
            i -= 1
        if i > 0 and src[i - 1] == ">":  # template arguments: skip to the matching '<'
            depth = 0
            while i > 0:
                i -= 1
                depth += {">": 1, "<": -1}.get(src[i], 0)
                if depth == 0:
                    break
            continue
        j = i
        while j > 0 and (src[j - 1].isalnum() or src[j - 1] in "_:"):
            j -= 1
        if j == i:
            raise SystemExit(f"rewrite_launches: no kernel name before <<< at offset {end}")
        return j


def rewrite(src: str) -> str:
    out, pos = [], 0
    while True:
        start = src.find("<<<", pos)
        if start < 0:
            out.append(src[pos:])
            break
        stop = src.find(">>>", start)
        if stop < 0:
            raise SystemExit("rewrite_launches: <<< without >>>")
        k = _kernel_start(src, start)
        paren = stop + 3
        while src[paren].isspace():
            paren += 1
        if src[paren] != "(":
            raise SystemExit("rewrite_launches: >>> not followed by '('")
        kernel, cfg = src[k:start].strip(), src[start + 3:stop]
        after = paren + 1
        while src[after].isspace():
            after += 1
        sep = "" if src[after] == ")" else ", "
        out.append(src[pos:k])
        out.append(f"::gfsim::launch({kernel}, ::gfsim::config({cfg}){sep}")
        pos = paren + 1
    return _COOPERATIVE.sub(r"cudaLaunchCooperativeKernel(\1", "".join(out))


def main() -> None:
    src_path, out_path = sys.argv[1], sys.argv[2]
    with open(src_path) as f:
        src = f.read()
    text = f'#line 1 "{src_path}"\n' + rewrite(src)
    # Device code sees __CUDA_ARCH__ (its GPU branches run); host code too, which is harmless
    # here: gradfast's host code never branches on it.
    prelude = "#define __CUDACC__ 1\n#define __CUDA_ARCH__ 900\n#include <cuda_runtime.h>\n"
    with open(out_path, "w") as f:
        f.write(prelude + text)


if __name__ == "__main__":
    main()
