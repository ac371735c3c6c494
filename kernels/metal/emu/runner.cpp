// runner.cpp: executes Metal compute dispatches on the CPU.
//
// Every GPU thread of a threadgroup is a fiber (ucontext) with its own stack;
// the fibers of a threadgroup run round-robin on one OS thread, switching only
// at SIMD-group collectives, barriers and exit, so collectives and barriers
// synchronize as on the hardware. A collective or barrier not reached by all
// the threads it needs is reported as an error. Threadgroups run one after
// another.
//
// Protocol (stdin, one command a line; each answered "ok ..." or "err <msg>"):
//   map ID SIZE PATH      map a buffer file shared with the caller
//   unmap ID              unmap it
//   run KERNEL GX GY GZ TX TY TZ NC {IDX VAL}*NC NA {b ID OFF LEN | i HEX}*NA
//   list                  the kernels and their buffer counts
//   order forward|reverse the order threads and threadgroups are run in
//   quit
// With AddressSanitizer the buffer arguments are copied to heap blocks of
// exactly their bound length, so out-of-bounds accesses are reported.

#if defined(__APPLE__)
// macOS keeps the (deprecated) ucontext routines behind _XOPEN_SOURCE.
#define _XOPEN_SOURCE 700
#define _DARWIN_C_SOURCE
#endif

#include "emu.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer) && !defined(EMU_ASAN)
#define EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#endif

// Context switching: a hand-rolled switch of the callee-saved registers on
// Linux x86-64 (no signal-mask system call, unlike swapcontext), ucontext
// elsewhere and under AddressSanitizer.
#if defined(__linux__) && defined(__x86_64__) && !defined(EMU_ASAN)
#define EMU_FASTSWITCH 1
extern "C" void emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch,.-emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
struct Ctx {
    void* sp;
};
#else
struct Ctx {
    ucontext_t uc;
};
#endif

namespace emu {
extern const KernelInfo kernels[];
extern const int nkernels;
bool set_constant(int index, long value);
} // namespace emu

namespace {

using namespace emu;

enum State { READY, WAIT_COLL, WAIT_BAR, WAIT_SBAR, DONE };

struct Fiber {
    Ctx ctx;
    char* stack;
    State st;
    bool started;
    Pos pos;
    int op;
    const char* name;
    const char* file;
    int line;
    long seq;
    void* val;
    void* res;
    int arg;
    Combine comb;
    const char* bfile;
    int bline;
    long bseq;
    long sbseq;
};

#ifdef EMU_ASAN
const size_t kStack = 512 * 1024;
#else
const size_t kStack = 128 * 1024;
#endif

std::vector<Fiber> fibers;
int nthreads;
Fiber* cur;
Ctx sched_ctx;
#ifndef EMU_FASTSWITCH
ucontext_t fiber_template;
#endif

// jump saves the current context in from and resumes to.
inline void jump(Ctx* from, Ctx* to) {
#ifdef EMU_FASTSWITCH
    emu_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}
bool failed;
std::string errmsg;
KernelFn cur_fn;
void** cur_bufs;
// reverse runs the ready threads of a threadgroup last to first (and the
// threadgroups of a grid too): a kernel that races on threadgroup memory
// (a missing barrier) gives different results in the two orders.
bool reverse;
#ifdef EMU_ASAN
const void* sched_bottom;
size_t sched_size;
#endif

void set_error(const char* fmt, ...) {
    if (failed) {
        return;
    }
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    failed = true;
    errmsg = buf;
}

// to_sched switches from the current fiber back to the scheduler; dead is
// true when the fiber will not run again.
void to_sched(bool dead) {
#ifdef EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(dead ? nullptr : &fake, sched_bottom, sched_size);
    jump(&cur->ctx, &sched_ctx);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    (void)dead;
    jump(&cur->ctx, &sched_ctx);
#endif
}

void fail_here() {
    to_sched(true);
    // Never resumed.
    abort();
}

const char* state_name(const Fiber& f) {
    switch (f.st) {
    case READY:
        return "running";
    case WAIT_COLL:
        return f.name;
    case WAIT_BAR:
        return "threadgroup_barrier";
    case WAIT_SBAR:
        return "simdgroup_barrier";
    default:
        return "exited";
    }
}

// where formats the source location a fiber waits at.
std::string where(const Fiber& f) {
    char b[300];
    if (f.st == WAIT_COLL) {
        snprintf(b, sizeof b, "%s:%d", f.file, f.line);
    } else {
        snprintf(b, sizeof b, "%s:%d", f.bfile, f.bline);
    }
    return b;
}

bool same_place(const char* f1, int l1, const char* f2, int l2) {
    return l1 == l2 && strcmp(f1, f2) == 0;
}

void entry() {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched_bottom, &sched_size);
#endif
    cur_fn(cur->pos, cur_bufs);
    Fiber* me = cur;
    me->st = DONE;
    int base = int(me->pos.sg) * 32;
    int n = std::min(32, nthreads - base);
    for (int l = base; l < base + n; l++) {
        Fiber& f = fibers[l];
        if (f.st == WAIT_COLL || f.st == WAIT_SBAR) {
            set_error("divergent %s at %s: lane %u exited while lane %u of SIMD-group %u waits in it",
                      state_name(f), where(f).c_str(), me->pos.lane, f.pos.lane, me->pos.sg);
        }
    }
    for (int i = 0; i < nthreads; i++) {
        if (fibers[i].st == WAIT_BAR) {
            set_error("divergent threadgroup_barrier at %s: thread %u exited while thread %d waits in it",
                      where(fibers[i]).c_str(), me->pos.tiitg, i);
            break;
        }
    }
    to_sched(true);
    abort();
}

} // namespace

namespace emu {

void collective(int op, const char* name, const char* file, int line, void* val, void* res, int arg, Combine comb) {
    Fiber* me = cur;
    me->op = op;
    me->name = name;
    me->file = file;
    me->line = line;
    me->val = val;
    me->res = res;
    me->arg = arg;
    me->comb = comb;
    me->seq++;
    me->st = WAIT_COLL;
    int base = int(me->pos.sg) * 32;
    int n = std::min(32, nthreads - base);
    bool all = true;
    for (int l = base; l < base + n; l++) {
        Fiber& f = fibers[l];
        switch (f.st) {
        case DONE:
            set_error("divergent %s at %s: lane %u of SIMD-group %u has already exited", name, where(*me).c_str(),
                      f.pos.lane, me->pos.sg);
            fail_here();
            break;
        case WAIT_BAR:
        case WAIT_SBAR:
            set_error("divergent %s at %s: lane %u of SIMD-group %u waits in %s at %s", name, where(*me).c_str(),
                      f.pos.lane, me->pos.sg, state_name(f), where(f).c_str());
            fail_here();
            break;
        case WAIT_COLL:
            if (f.op != op || !same_place(f.file, f.line, file, line) || f.seq != me->seq) {
                set_error("divergent collectives in SIMD-group %u: lane %u in %s at %s (#%ld), lane %u in %s at %s (#%ld)",
                          me->pos.sg, me->pos.lane, name, where(*me).c_str(), me->seq, f.pos.lane, f.name,
                          where(f).c_str(), f.seq);
                fail_here();
            }
            break;
        default:
            all = false;
        }
    }
    if (!all) {
        to_sched(false);
        if (failed) {
            fail_here();
        }
        return;
    }
    void* vals[32];
    void* ress[32];
    int args[32];
    for (int i = 0; i < n; i++) {
        vals[i] = fibers[base + i].val;
        ress[i] = fibers[base + i].res;
        args[i] = fibers[base + i].arg;
    }
    if (op == OP_BROADCAST) {
        for (int i = 1; i < n; i++) {
            if (args[i] != args[0]) {
                set_error("simd_broadcast at %s: lanes 0 and %d name different source lanes (%d, %d)",
                          where(*me).c_str(), i, args[0], args[i]);
                fail_here();
            }
        }
    }
    comb(vals, ress, args, n);
    for (int i = 0; i < n; i++) {
        fibers[base + i].st = READY;
    }
}

void barrier(bool simd, const char* file, int line) {
    Fiber* me = cur;
    int lo = 0, hi = nthreads;
    if (simd) {
        lo = int(me->pos.sg) * 32;
        hi = std::min(nthreads, lo + 32);
        me->sbseq++;
        me->st = WAIT_SBAR;
    } else {
        me->bseq++;
        me->st = WAIT_BAR;
    }
    me->bfile = file;
    me->bline = line;
    const char* name = simd ? "simdgroup_barrier" : "threadgroup_barrier";
    bool all = true;
    for (int i = lo; i < hi; i++) {
        Fiber& f = fibers[i];
        if (f.st == DONE) {
            set_error("divergent %s at %s: thread %d has already exited", name, where(*me).c_str(), i);
            fail_here();
        }
        if ((f.st == WAIT_COLL || (!simd && f.st == WAIT_SBAR)) && f.pos.sg == me->pos.sg) {
            set_error("divergent %s at %s: lane %u of the same SIMD-group waits in %s at %s", name,
                      where(*me).c_str(), f.pos.lane, state_name(f), where(f).c_str());
            fail_here();
        }
        if (f.st == (simd ? WAIT_SBAR : WAIT_BAR)) {
            long a = simd ? f.sbseq : f.bseq, b = simd ? me->sbseq : me->bseq;
            if (!same_place(f.bfile, f.bline, file, line) || a != b) {
                set_error("divergent barriers: thread %u at %s (#%ld), thread %d at %s (#%ld)", me->pos.tiitg,
                          where(*me).c_str(), b, i, where(f).c_str(), a);
                fail_here();
            }
        } else {
            all = false;
        }
    }
    if (!all) {
        to_sched(false);
        if (failed) {
            fail_here();
        }
        return;
    }
    for (int i = lo; i < hi; i++) {
        fibers[i].st = READY;
    }
}

} // namespace emu

namespace {

std::vector<char*> stacks;

// run_group runs one threadgroup to completion; false on error.
bool run_group(const uint3& g, const uint3& tg, const uint3& ngroups) {
    nthreads = int(tg.x * tg.y * tg.z);
    if (int(fibers.size()) < nthreads) {
        fibers.resize(nthreads);
    }
    while (int(stacks.size()) < nthreads) {
        void* s = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (s == MAP_FAILED) {
            set_error("mmap of a %zu-byte fiber stack failed", kStack);
            return false;
        }
        stacks.push_back((char*)s);
    }
    uint nsg = (uint(nthreads) + 31) / 32;
    for (int i = 0; i < nthreads; i++) {
        Fiber& f = fibers[i];
        f = Fiber();
        f.stack = stacks[i];
        f.st = READY;
        uint u = uint(i);
        f.pos.tptg = uint3(u % tg.x, (u / tg.x) % tg.y, u / (tg.x * tg.y));
        f.pos.tgpig = g;
        f.pos.ntg = tg;
        f.pos.tgpg = ngroups;
        f.pos.tpg = uint3(tg.x * ngroups.x, tg.y * ngroups.y, tg.z * ngroups.z);
        f.pos.tpig = uint3(g.x * tg.x + f.pos.tptg.x, g.y * tg.y + f.pos.tptg.y, g.z * tg.z + f.pos.tptg.z);
        f.pos.tiitg = u;
        f.pos.lane = u % 32;
        f.pos.sg = u / 32;
        f.pos.nsg = nsg;
#ifdef EMU_ASAN
        ASAN_UNPOISON_MEMORY_REGION(f.stack, kStack);
#endif
#ifdef EMU_FASTSWITCH
        // A frame that emu_switch pops: six registers, then entry as the
        // return address; entry starts with rsp ≡ 8 (mod 16) as after a call.
        uintptr_t* top = (uintptr_t*)(f.stack + kStack);
        top[-1] = 0;
        top[-2] = (uintptr_t)entry;
        for (int r = 3; r <= 8; r++) {
            top[-r] = 0;
        }
        f.ctx.sp = &top[-8];
#else
        f.ctx.uc = fiber_template;
        f.ctx.uc.uc_stack.ss_sp = f.stack;
        f.ctx.uc.uc_stack.ss_size = kStack;
        f.ctx.uc.uc_link = nullptr;
        makecontext(&f.ctx.uc, entry, 0);
#endif
    }
    for (;;) {
        bool progress = false;
        int done = 0;
        for (int k = 0; k < nthreads; k++) {
            Fiber& f = fibers[reverse ? nthreads - 1 - k : k];
            if (f.st == DONE) {
                done++;
                continue;
            }
            if (f.st != READY) {
                continue;
            }
            cur = &f;
            progress = true;
#ifdef EMU_ASAN
            void* fake = nullptr;
            __sanitizer_start_switch_fiber(&fake, f.stack, kStack);
            jump(&sched_ctx, &f.ctx);
            __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
            jump(&sched_ctx, &f.ctx);
#endif
            if (failed) {
                return false;
            }
        }
        if (done == nthreads) {
            return true;
        }
        if (!progress) {
            // Nobody can run: describe the first two waiting states that differ.
            std::string d;
            for (int i = 0; i < nthreads; i++) {
                if (fibers[i].st == DONE) {
                    continue;
                }
                char b[160];
                snprintf(b, sizeof b, "%sthread %d in %s at %s", d.empty() ? "" : ", ", i,
                         state_name(fibers[i]), where(fibers[i]).c_str());
                d += b;
                if (d.size() > 600) {
                    break;
                }
            }
            set_error("deadlock (divergent control flow): %s", d.c_str());
            return false;
        }
    }
}

struct Mapping {
    char* ptr;
    size_t size;
};
std::map<long, Mapping> maps;

void reply_err(const std::string& m) {
    std::string s = m;
    for (auto& c : s) {
        if (c == '\n') {
            c = ' ';
        }
    }
    printf("err %s\n", s.c_str());
    fflush(stdout);
}

void reply_ok(const char* extra = "") {
    printf("ok%s\n", extra);
    fflush(stdout);
}

int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Tokenizer over one command line.
struct Toks {
    std::vector<std::string> t;
    size_t i = 0;
    bool more() const { return i < t.size(); }
    const std::string& str() {
        static const std::string empty;
        return i < t.size() ? t[i++] : empty;
    }
    bool num(long& v) {
        if (i >= t.size()) return false;
        char* end = nullptr;
        v = strtol(t[i].c_str(), &end, 10);
        if (end == t[i].c_str() || *end != 0) return false;
        i++;
        return true;
    }
};

void cmd_run(Toks& tk) {
    std::string name = tk.str();
    const KernelInfo* k = nullptr;
    for (int i = 0; i < nkernels; i++) {
        if (name == kernels[i].name) {
            k = &kernels[i];
        }
    }
    if (k == nullptr) {
        reply_err("unknown kernel " + name);
        return;
    }
    long d[6];
    for (long& v : d) {
        if (!tk.num(v) || v <= 0 || v > (1L << 31)) {
            reply_err("bad grid or threadgroup size");
            return;
        }
    }
    if (d[3] * d[4] * d[5] > 1024) {
        reply_err("threadgroup of more than 1024 threads");
        return;
    }
    long nc;
    if (!tk.num(nc) || nc < 0) {
        reply_err("bad constant count");
        return;
    }
    for (long i = 0; i < nc; i++) {
        long idx, val;
        if (!tk.num(idx) || !tk.num(val)) {
            reply_err("bad constant");
            return;
        }
        if (!set_constant(int(idx), val)) {
            reply_err("unknown function constant index " + std::to_string(idx));
            return;
        }
    }
    long na;
    if (!tk.num(na) || na < 0 || na > 31) {
        reply_err("bad argument count");
        return;
    }
    if (na != k->nbuf) {
        reply_err("kernel " + name + " takes " + std::to_string(k->nbuf) + " buffers, got " + std::to_string(na));
        return;
    }
    std::vector<void*> bufs(na);
    std::vector<std::vector<char>> inl(na);
    struct Copy {
        char* dst;
        char* src;
        size_t n;
    };
    std::vector<Copy> copies;
    for (long a = 0; a < na; a++) {
        std::string kind = tk.str();
        if (kind == "b") {
            long id, off, len;
            if (!tk.num(id) || !tk.num(off) || !tk.num(len) || off < 0 || len < 0) {
                reply_err("bad buffer argument " + std::to_string(a));
                return;
            }
            auto it = maps.find(id);
            if (it == maps.end()) {
                reply_err("argument " + std::to_string(a) + ": unknown buffer " + std::to_string(id));
                return;
            }
            if (size_t(off) + size_t(len) > it->second.size) {
                reply_err("argument " + std::to_string(a) + ": range past the end of buffer " + std::to_string(id));
                return;
            }
            char* p = it->second.ptr + off;
#ifdef EMU_ASAN
            char* c = (char*)malloc(len > 0 ? size_t(len) : 1);
            memcpy(c, p, size_t(len));
            if (len == 0) {
                ASAN_POISON_MEMORY_REGION(c, 1);
            }
            copies.push_back(Copy{p, c, size_t(len)});
            p = c;
#endif
            bufs[a] = p;
        } else if (kind == "i") {
            const std::string& h = tk.str();
            if (h.size() % 2 != 0) {
                reply_err("bad inline bytes");
                return;
            }
            inl[a].resize(h.size() / 2 + 16);
            for (size_t j = 0; j < h.size() / 2; j++) {
                int hi = hexval(h[2 * j]), lo = hexval(h[2 * j + 1]);
                if (hi < 0 || lo < 0) {
                    reply_err("bad inline bytes");
                    return;
                }
                inl[a][j] = char(hi * 16 + lo);
            }
#ifdef EMU_ASAN
            size_t n = h.size() / 2;
            char* c = (char*)malloc(n > 0 ? n : 1);
            memcpy(c, inl[a].data(), n);
            copies.push_back(Copy{nullptr, c, n});
            bufs[a] = c;
#else
            bufs[a] = inl[a].data();
#endif
        } else {
            reply_err("bad argument kind " + kind);
            return;
        }
    }
    failed = false;
    errmsg.clear();
    cur_fn = k->fn;
    cur_bufs = bufs.data();
    uint3 ng{uint(d[0]), uint(d[1]), uint(d[2])};
    uint3 tg{uint(d[3]), uint(d[4]), uint(d[5])};
    bool ok = true;
    for (uint zi = 0; zi < ng.z && ok; zi++) {
        for (uint yi = 0; yi < ng.y && ok; yi++) {
            for (uint xi = 0; xi < ng.x && ok; xi++) {
                uint x = reverse ? ng.x - 1 - xi : xi, y = reverse ? ng.y - 1 - yi : yi, z = reverse ? ng.z - 1 - zi : zi;
                if (!run_group(uint3(x, y, z), tg, ng)) {
                    char b[96];
                    snprintf(b, sizeof b, "%s threadgroup (%u,%u,%u): ", name.c_str(), x, y, z);
                    errmsg = b + errmsg;
                    ok = false;
                }
            }
        }
    }
    for (auto& c : copies) {
        if (c.dst != nullptr) {
            memcpy(c.dst, c.src, c.n);
        }
        free(c.src);
    }
    if (!ok) {
        reply_err(errmsg);
        return;
    }
    reply_ok();
}

void cmd_map(Toks& tk) {
    long id, size;
    if (!tk.num(id) || !tk.num(size) || size <= 0) {
        reply_err("bad map command");
        return;
    }
    std::string path = tk.str();
    if (maps.count(id)) {
        reply_err("buffer " + std::to_string(id) + " already mapped");
        return;
    }
    int fd = open(path.c_str(), O_RDWR);
    if (fd < 0) {
        reply_err("open " + path + ": " + strerror(errno));
        return;
    }
    void* p = mmap(nullptr, size_t(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        reply_err("mmap " + path + ": " + strerror(errno));
        return;
    }
    maps[id] = Mapping{(char*)p, size_t(size)};
    reply_ok();
}

void cmd_unmap(Toks& tk) {
    long id;
    if (!tk.num(id) || !maps.count(id)) {
        reply_err("bad unmap command");
        return;
    }
    munmap(maps[id].ptr, maps[id].size);
    maps.erase(id);
    reply_ok();
}

} // namespace

int main() {
#ifndef EMU_FASTSWITCH
    getcontext(&fiber_template);
#endif
    std::string line;
    char buf[1 << 16];
    for (;;) {
        line.clear();
        bool eof = true;
        while (fgets(buf, sizeof buf, stdin) != nullptr) {
            eof = false;
            line += buf;
            if (!line.empty() && line.back() == '\n') {
                break;
            }
        }
        if (eof && line.empty()) {
            return 0;
        }
        Toks tk;
        size_t i = 0;
        while (i < line.size()) {
            while (i < line.size() && (line[i] == ' ' || line[i] == '\n' || line[i] == '\r')) i++;
            size_t j = i;
            while (j < line.size() && line[j] != ' ' && line[j] != '\n' && line[j] != '\r') j++;
            if (j > i) tk.t.push_back(line.substr(i, j - i));
            i = j;
        }
        std::string cmd = tk.str();
        if (cmd == "run") {
            cmd_run(tk);
        } else if (cmd == "map") {
            cmd_map(tk);
        } else if (cmd == "unmap") {
            cmd_unmap(tk);
        } else if (cmd == "list") {
            std::string s;
            for (int k = 0; k < nkernels; k++) {
                s += " " + std::string(kernels[k].name) + ":" + std::to_string(kernels[k].nbuf);
            }
            reply_ok(s.c_str());
        } else if (cmd == "order") {
            std::string o = tk.str();
            if (o == "forward" || o == "reverse") {
                reverse = o == "reverse";
                reply_ok();
            } else {
                reply_err("order must be forward or reverse");
            }
        } else if (cmd == "quit") {
            reply_ok();
            return 0;
        } else if (cmd.empty()) {
            continue;
        } else {
            reply_err("unknown command " + cmd);
        }
    }
}
