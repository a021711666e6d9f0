#include "fiber.h"

#include <cstdint>
#include <cstring>

#if defined(GFSIM_FAST_SWITCH)
// gfsim_swap(void** save_sp, void* load_sp): push the callee-saved registers, MXCSR and the
// x87 control word (the SysV ABI's preserved state), switch stacks, pop the other side's.
extern "C" void gfsim_swap(void** save_sp, void* load_sp);
asm(R"(
  .pushsection .text
  .globl gfsim_swap
  .type gfsim_swap, @function
gfsim_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gfsim_swap, .-gfsim_swap
  .popsection
)");
#endif

namespace gfsim {

void context_init(Context& c, char* stack, size_t bytes, void (*entry)()) {
#if defined(GFSIM_FAST_SWITCH)
  // The frame gfsim_swap pops: control words, r15..r12, rbx, rbp, then `ret` into entry
  // with the stack as after a call (rsp = 8 mod 16) and a null return address above it.
  auto* top = reinterpret_cast<uint64_t*>(
      (reinterpret_cast<uintptr_t>(stack + bytes) & ~(uintptr_t)15));
  uint64_t* sp = top - 9;
  std::memset(sp, 0, 9 * sizeof(uint64_t));
  const uint32_t mxcsr = 0x1f80;    // all exceptions masked, round to nearest
  const uint16_t fpucw = 0x037f;    // the x87 default
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpucw, 2);
  sp[7] = reinterpret_cast<uint64_t>(entry);  // ret target; sp[8] = 0: entry's return
  c.sp = sp;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
#endif
}

void context_switch(Context& from, Context& to) {
#if defined(GFSIM_FAST_SWITCH)
  gfsim_swap(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

}  // namespace gfsim
