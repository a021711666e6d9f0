// Stack switching between cudasim's block scheduler and the fibers (CUDA threads) of one
// block. On x86-64 a handful of instructions save and restore the callee-saved registers:
// swapcontext also makes a sigprocmask system call on every switch, which took most of the
// simulator's time. Elsewhere, and under AddressSanitizer (which must see every stack
// switch), ucontext.
#pragma once
#include <cstddef>

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define GFSIM_FAST_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace gfsim {

struct Context {
#if defined(GFSIM_FAST_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// Prepares `c` to start entry() on the given stack; entry must never return.
void context_init(Context& c, char* stack, size_t bytes, void (*entry)());
// Saves the running context in `from` and resumes `to`.
void context_switch(Context& from, Context& to);

}  // namespace gfsim
