"""The flow model's LSTM and heads in numpy, for sampling without TensorFlow.

Training runs in Keras; sampling runs here from the stored weights. Starting TensorFlow takes
seconds and its per-step dispatch costs about a millisecond, which dominated generation. Here a
step is a handful of float32 array operations on all active flows at once:

* Every input of the network is an embedding, so each embedding's product with the layer it
  feeds is precomputed as a table (``E @ W[rows]``); a step adds table rows instead of
  multiplying concatenated inputs. The flow's constant condition (app, size class) is added
  once per flow, the position (the same for every flow at a step) once per step.
* One matrix product per step: ``h_t @ [heads' h rows | recurrent kernel]`` gives the heads'
  input for this step and the recurrent term for the next one.
* Categorical draws invert the cumulative softmax with one uniform number per head and flow;
  the two binary heads (direction, end of flow) compare with a sigmoid.

``StepNet.step`` is the plain step, kept as the reference (tests check it against Keras and
the fast path against it); ``Walker`` is what sampling runs: the same arithmetic and uniform
numbers, rearranged to cost about half as much per packet (see its docstring).

``arch`` names the network's parts: ``step`` the LSTM's inputs in order, ``heads`` each head's
inputs in order (``h`` = the LSTM output, ``cur_X`` = the token X just drawn at this step,
``prev_X`` = the previous packet's token X, anything else = a condition). Token names: dir,
flag, code, gap; their embeddings are ``e_<token>``, a condition's is ``e_<name>``.
"""
from __future__ import annotations

import os

import numpy as np

TOKENS = ("dir", "flag", "code", "gap")
HEADS = ("dir", "flag", "code", "gap", "last")
# the architecture of the first flow model (bundles made before the architecture was stored)
ARCH_V1 = {
    "step": ["prev_dir", "prev_flag", "prev_code", "prev_gap", "app", "size", "pos", "rem"],
    "heads": {
        "dir": ["h", "app", "size", "pos", "rem"],
        "flag": ["h", "app", "size", "pos", "rem", "cur_dir"],
        "code": ["h", "app", "size", "pos", "rem", "cur_dir", "cur_flag"],
        "gap": ["h", "app", "size", "pos", "rem", "cur_dir", "cur_flag", "cur_code"],
        "last": ["h", "app", "size", "pos", "rem", "cur_dir", "cur_flag", "cur_code", "cur_gap"],
    },
}
# the flag and gap heads also see the previous packet's tokens directly, not only through the
# LSTM state: flag pairs (SYN -> SYN+ACK, FIN+ACK -> ACK) and periodic gaps (ARP, ICMP) follow them
ARCH_V2 = {
    "step": ARCH_V1["step"],
    "heads": {
        "dir": ["h", "app", "size", "pos", "rem", "prev_dir", "prev_flag"],
        "flag": ["h", "app", "size", "pos", "rem", "prev_dir", "prev_flag", "cur_dir"],
        "code": ARCH_V1["heads"]["code"],
        "gap": ["h", "app", "size", "pos", "rem", "prev_gap", "cur_dir", "cur_flag", "cur_code"],
        "last": ARCH_V1["heads"]["last"],
    },
}
FLOW_CONST = ("app", "size")  # conditions that stay the same for the whole flow


def _emb_name(part: str) -> str:
    for p in ("prev_", "cur_"):
        if part.startswith(p):
            return "e_" + part[len(p):]
    return "e_" + part


def keras_arrays(model) -> dict[str, np.ndarray]:
    """The weights of a trained Keras flow network as named float32 arrays."""
    out = {}
    for layer in model.layers:
        w = layer.get_weights()
        if not w:
            continue
        if layer.name == "lstm":
            out["lstm_kernel"], out["lstm_recurrent"], out["lstm_bias"] = w
        elif layer.name.startswith("e_"):
            out[layer.name] = w[0]
        else:  # dense: a head's hidden layer or its output
            out[f"{layer.name}_kernel"], out[f"{layer.name}_bias"] = w
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def _split_rows(parts: list[str], w: dict, units: int) -> dict[str, slice]:
    """Row slice of each input part in the concatenated input of a layer."""
    rows, at = {}, 0
    for p in parts:
        d = units if p == "h" else w[_emb_name(p)].shape[1]
        rows[p] = slice(at, at + d)
        at += d
    return rows


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """In place: sigmoid(x) = (1 + tanh(x / 2)) / 2, one transcendental per value."""
    x *= 0.5
    np.tanh(x, out=x)
    x += 1.0
    x *= 0.5
    return x


def draw_categorical(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One class per row, with probabilities softmax(logits); ``u`` uniform in [0, 1). Overwrites logits."""
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    np.cumsum(logits, axis=1, out=logits)
    return (logits < (u * logits[:, -1])[:, None]).sum(axis=1).astype(np.int32)


class StepNet:
    """One kind's flow network, ready to step all active flows at once."""

    def __init__(self, arrays: dict, arch: dict, units: int):
        w = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
        self.arch, self.U = arch, int(units)
        U = self.U
        # Keras orders the gates (input, forget, cell, output); here the three sigmoid gates come
        # first, so that one call activates them: (input, forget, output, cell)
        perm = np.r_[0:2 * U, 3 * U:4 * U, 2 * U:3 * U]
        for k in ("lstm_kernel", "lstm_recurrent", "lstm_bias"):
            w[k] = w[k][..., perm]
        self.w = w  # the weights, gates reordered: ``Walker`` arranges them its own way
        step_rows = _split_rows(arch["step"], w, U)
        K = w["lstm_kernel"]
        if K.shape != (step_rows[arch["step"][-1]].stop, 4 * U) or w["lstm_recurrent"].shape != (U, 4 * U):
            raise ValueError("LSTM weights do not match the architecture")
        hidden = w["dir_hidden_kernel"].shape[1]
        self.hidden = hidden
        H = hidden * len(HEADS)
        self.width = 4 * U + H  # a step's pre-activations: [LSTM gates | heads' hidden layers]
        # per input part: its table of contributions to [gates | heads' hidden] (zeros where unused)
        tables: dict[str, np.ndarray] = {}

        def table(part):
            if part not in tables:
                tables[part] = np.zeros((w[_emb_name(part)].shape[0], self.width), np.float32)
            return tables[part]

        for p, sl in step_rows.items():
            table(p)[:, :4 * U] += w[_emb_name(p)] @ K[sl]
        W_h = []
        self.cur_tables: dict[str, list[tuple[str, np.ndarray]]] = {}
        for j, head in enumerate(HEADS):
            parts = arch["heads"][head]
            Wk = w[f"{head}_hidden_kernel"]
            rows = _split_rows(parts, w, U)
            if Wk.shape != (rows[parts[-1]].stop, hidden):
                raise ValueError(f"head {head!r} weights do not match the architecture")
            cols = slice(4 * U + j * hidden, 4 * U + (j + 1) * hidden)
            self.cur_tables[head] = []
            for p, sl in rows.items():
                if p == "h":
                    W_h.append(Wk[sl])
                elif p.startswith("cur_"):
                    self.cur_tables[head].append((p[4:], w[_emb_name(p)] @ Wk[sl]))
                else:
                    table(p)[:, cols] += w[_emb_name(p)] @ Wk[sl]
        bias = np.concatenate([w["lstm_bias"]] + [w[f"{h}_hidden_bias"] for h in HEADS])
        # condition parts that stay with the flow are folded, with the biases, into one per-flow row
        # the previous direction and flags: one table indexed by (direction, flags)
        if "prev_dir" in tables and "prev_flag" in tables:
            td, tf = tables.pop("prev_dir"), tables.pop("prev_flag")
            self.n_flag_rows = len(tf)
            tables["prev_dir_flag"] = (td[:, None, :] + tf[None, :, :]).reshape(-1, self.width)
        # the position in the flow and the packets remaining: one table indexed by (pos, rem)
        if "pos" in tables and "rem" in tables:
            tp, tr = tables.pop("pos"), tables.pop("rem")
            self.n_rem_rows = len(tr)
            tables["pos_rem"] = (tp[:, None, :] + tr[None, :, :]).reshape(-1, self.width)
        self.tables, self.bias = tables, bias
        self.flow_parts = [p for p in tables if p in FLOW_CONST]
        self.row_parts = [p for p in tables if p not in FLOW_CONST]
        # the columns each table touches (a previous token feeds the gates alone): add only those
        self.cols = {}
        for p, tab in tables.items():
            nz = np.flatnonzero(np.any(tab != 0, axis=0))
            self.cols[p] = slice(int(nz[0]), int(nz[-1]) + 1) if len(nz) else slice(0, 0)
            tables[p] = np.ascontiguousarray(tab[:, self.cols[p]])
        self.W_big = np.ascontiguousarray(np.concatenate(W_h + [w["lstm_recurrent"]], axis=1))  # h -> [heads | gates]
        self.out = {h: (np.ascontiguousarray(w[f"{h}_kernel"]), w[f"{h}_bias"]) for h in HEADS}
        self.n_classes = {h: self.out[h][0].shape[1] for h in HEADS}

    def flow_rows(self, cond: dict[str, np.ndarray]) -> np.ndarray:
        """Per flow: biases plus its constant conditions' contributions (n x width)."""
        n = len(next(iter(cond.values())))
        out = np.broadcast_to(self.bias, (n, self.width)).copy()
        for p in self.flow_parts:
            out[:, self.cols[p]] += self.tables[p][cond[p]]
        return out

    def index(self, part: str, inputs: dict, t: int) -> np.ndarray:
        if part == "prev_dir_flag":
            return inputs["prev_dir"][:, t] * self.n_flag_rows + inputs["prev_flag"][:, t]
        if part == "pos_rem":
            return inputs["pos"][:, t] * self.n_rem_rows + inputs["rem"][:, t]
        return inputs[part][:, t]

    def row_index(self, prev: np.ndarray, pos: int, rem: np.ndarray) -> dict[str, np.ndarray]:
        """Per row, the index into each per-row table: ``prev`` the previous tokens (n x 4),
        ``pos`` the position bucket of this step, ``rem`` each flow's remaining-packets bucket."""
        idx = {}
        for p in self.row_parts:
            if p == "prev_dir_flag":
                idx[p] = prev[:, 0] * self.n_flag_rows + prev[:, 1]
            elif p == "pos_rem":
                idx[p] = rem + pos * self.n_rem_rows
            elif p == "pos":
                idx[p] = np.full(len(prev), pos)
            elif p == "rem":
                idx[p] = rem
            else:
                idx[p] = prev[:, TOKENS.index(p[len("prev_"):])]
        return idx

    def buffers(self, rows: int) -> dict[str, np.ndarray]:
        """Work arrays for steps of up to ``rows`` flows, reused so that a step allocates little."""
        return {"A": np.empty((rows, self.width), np.float32),
                "tmp": np.empty(rows * self.width, np.float32),
                "HH": np.empty((rows, self.W_big.shape[1]), np.float32),
                "h": np.empty((rows, self.U), np.float32)}

    def step(self, base: np.ndarray, rows: np.ndarray, row_idx: dict[str, np.ndarray], rec: np.ndarray | None, c: np.ndarray | None,
             u: np.ndarray, buf: dict[str, np.ndarray], want_last: bool = True):
        """One packet for each of ``rows`` (indices into ``base``, the ``flow_rows`` of all flows).

        ``row_idx``: from ``row_index``; ``rec``, ``c``: the recurrent term
        ``h @ U_rec`` and the cell state, updated in place (None: the zero state, and the new
        values are then returned in fresh arrays); ``u``: n x 5 uniform numbers; ``buf``: from
        ``buffers``; ``want_last``: False skips the end-of-flow head (``last`` is then None).
        Returns (tokens n x 4 [dir, flag, code, gap], last n bool, rec, c).
        """
        U, hid, m = self.U, self.hidden, len(rows)
        A = buf["A"][:m]
        np.take(base, rows, axis=0, out=A)
        for p in self.row_parts:
            sl = self.cols[p]
            w = sl.stop - sl.start
            tmp = buf["tmp"][:m * w].reshape(m, w)
            np.take(self.tables[p], row_idx[p], axis=0, out=tmp)
            A[:, sl] += tmp
        g = A[:, :4 * U]
        if rec is not None:
            g += rec
        _sigmoid(g[:, :3 * U])
        np.tanh(g[:, 3 * U:], out=g[:, 3 * U:])
        i, f, o, cc = g[:, :U], g[:, U:2 * U], g[:, 2 * U:3 * U], g[:, 3 * U:]
        if c is None:
            c = i * cc
        else:
            c *= f
            i *= cc
            c += i
        h = buf["h"][:m]
        np.tanh(c, out=h)
        h *= o
        HH = buf["HH"][:m]
        np.matmul(h, self.W_big, out=HH)
        n_heads = len(HEADS) * hid
        pre = A[:, 4 * U:]
        pre += HH[:, :n_heads]
        if rec is None:
            rec = HH[:, n_heads:].copy()
        else:
            rec[:] = HH[:, n_heads:]
        tok = np.empty((m, 4), np.int32)
        drawn = {}
        last = None
        for j, head in enumerate(HEADS):
            if head == "last" and not want_last:
                break
            z = pre[:, j * hid:(j + 1) * hid]
            for name, T in self.cur_tables[head]:
                z += T[drawn[name]]
            np.maximum(z, 0.0, out=z)
            W, b = self.out[head]
            logits = z @ W
            logits += b
            if head in ("dir", "last"):
                x = logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]
                k = u[:, j] < _sigmoid(np.ascontiguousarray(x))
                if head == "last":
                    last = k
                    break
                drawn[head] = k.astype(np.int32)
            else:
                drawn[head] = draw_categorical(logits, u[:, j])
            tok[:, j] = drawn[head]
        return tok, last, rec, c

    def forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Teacher-forced logits for (B, T) integer inputs named as in ``arch`` (for tests)."""
        B, T = next(iter(inputs.values())).shape
        U = self.U
        out = {h: np.zeros((B, T, self.n_classes[h]), np.float32) for h in HEADS}
        rec, c = None, None
        for t in range(T):
            A = np.broadcast_to(self.bias, (B, self.width)).copy()
            for p, tab in self.tables.items():
                A[:, self.cols[p]] += tab[self.index(p, inputs, t)]
            g = A[:, :4 * U] + (0 if rec is None else rec)
            i, f = _sigmoid(g[:, :U].copy()), _sigmoid(g[:, U:2 * U].copy())
            o, cc = _sigmoid(g[:, 2 * U:3 * U].copy()), np.tanh(g[:, 3 * U:])
            c = i * cc + (0 if c is None else f * c)
            h = o * np.tanh(c)
            HH = h @ self.W_big
            nh = len(HEADS) * self.hidden
            pre = A[:, 4 * U:] + HH[:, :nh]
            rec = HH[:, nh:]
            for j, head in enumerate(HEADS):
                z = pre[:, j * self.hidden:(j + 1) * self.hidden].copy()
                for name, tab in self.cur_tables[head]:
                    z += tab[inputs["cur_" + name][:, t]]
                W, b = self.out[head]
                out[head][:, t] = np.maximum(z, 0.0) @ W + b
        return out


# -- the fast sampling path ------------------------------------------------------------------

try:  # scipy's sparse-times-dense kernel sums a few table rows per row in one pass (a fused gather-add)
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # pragma: no cover - private in scipy; the public product does the same, slower per call
    _csr_matvecs = None

MAX_JOINT_ROWS = 4096  # inputs are joined into one table while their combinations stay this few
BLOCK = 2048  # rows per block of a step: a block's work arrays stay in the CPU's (L2 + L3) cache
LOOP_CUMSUM_ROWS = 128  # from this many rows, cumulative sums over classes run as whole-row adds
PREFIX_BLOCK = 8  # classes per block of the two-level cumulative sum (class counts are padded to a multiple)
NEG = np.float32(-1e30)  # the logit of a padding class: probability 0


def sampling_threads() -> int:
    """Threads that walk a kind's flows: ``NECST_SAMPLING_THREADS`` (default 1), at most the CPUs
    this process may use. The tokens are the same for any number; whether more threads are faster
    depends on free cores (numpy holds the GIL between its calls)."""
    try:
        want = int(os.environ.get("NECST_SAMPLING_THREADS", "1"))
    except ValueError:
        want = 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(want, cpus))


def _groups(parts: list[str], sizes: dict[str, int]) -> list[list[str]]:
    """Consecutive parts joined into groups whose number of value combinations stays small."""
    out, cur, rows = [], [], 1
    for p in parts:
        if cur and rows * sizes[p] > MAX_JOINT_ROWS:
            out.append(cur)
            cur, rows = [], 1
        cur.append(p)
        rows *= sizes[p]
    return out + [cur] if cur else out


def _joint_table(parts: list[str], tables: dict[str, np.ndarray]) -> np.ndarray:
    """Summed rows for every combination of the parts' values (the last part varies fastest)."""
    t = tables[parts[0]]
    for p in parts[1:]:
        t = (t[:, None, :] + tables[p][None, :, :]).reshape(-1, t.shape[1])
    return t


def _joint_index(parts: list[str], sizes: dict[str, int], values: dict, out: np.ndarray) -> np.ndarray:
    """Row of each flow's value combination in ``_joint_table(parts)``, written to ``out`` (int32)."""
    out[...] = values[parts[0]]
    for p in parts[1:]:
        out *= sizes[p]
        out += values[p]
    return out


class _RowSums:
    """``out[i] += sum_j table[idx[i, j]]``: a fixed number of table rows added to each row."""

    def __init__(self, table: np.ndarray, k: int, rows: int):
        self.table, self.flat, self.k = table, table.reshape(-1), k
        self.indptr = np.arange(0, k * rows + 1, k, dtype=np.int32)
        self.ones = np.ones(k * rows, np.float32)

    def add(self, idx: np.ndarray, out: np.ndarray) -> None:
        m = len(out)
        if _csr_matvecs is not None and out.flags.c_contiguous and idx.flags.c_contiguous:
            _csr_matvecs(m, self.table.shape[0], self.table.shape[1], self.indptr[:m + 1], idx.reshape(-1),
                         self.ones[:m * self.k], self.flat, out.reshape(-1))
        else:
            import scipy.sparse as sp

            s = sp.csr_matrix((self.ones[:m * self.k], idx.reshape(-1), self.indptr[:m + 1]),
                              shape=(m, self.table.shape[0]))
            out += s @ self.table


class Walker:
    """The autoregressive walk of many flows of one kind: the fast sampling path of ``StepNet``.

    It computes what ``StepNet.step`` computes (the plain reference, kept for tests) and draws
    with the same uniform numbers, arranged so that a packet costs few passes over memory:

    * Flows are sorted longest first, so the active flows are always a prefix of the state
      arrays: a finished flow leaves by shrinking the batch, not by copying every state.
    * Each input group (the flow's app and size, the position and packets remaining, the
      previous tokens) has one table of precomputed contributions; a step adds one row per
      group to the recurrent term in place (scipy's sparse kernel: one pass, no temporaries).
    * The sigmoid gates' weights are halved, so one tanh activates all four gates
      (sigmoid(x) = (1 + tanh(x / 2)) / 2; halving is exact in floating point), and the
      LSTM output is kept doubled with the following weights halved.
    * Each head's hidden pre-activations are contiguous, so the rows of the tokens drawn before
      it are added in one pass too, and its ReLU runs over contiguous memory.
    * Output biases ride in the heads' matrix products (a constant-1 hidden unit); logits come
      out transposed (classes x flows), so the softmax and cumulative sums run over whole rows.
    * Steps run in blocks of rows that fit in the CPU's cache.

    Tables are summed in float64 and stored in float32, so sums can differ from the reference's
    in the last bit (see tests/test_flow_sampling.py for what that changes).
    """

    def __init__(self, net: "StepNet", want_last: bool):
        w, arch, U, hid = net.w, net.arch, net.U, net.hidden
        self.U, self.hid, self.want_last = U, hid, want_last
        self.heads = HEADS if want_last else HEADS[:-1]
        hw = hid + 1  # a head's hidden units and its constant 1
        H = len(self.heads) * hw
        gates = slice(0, 4 * U)
        contrib: dict[str, np.ndarray] = {}  # input part -> (values x [gates | heads]) contributions

        def add(part, cols, m):
            if part not in contrib:
                contrib[part] = np.zeros((m.shape[0], 4 * U + H), np.float64)
            contrib[part][:, cols] += m

        K = w["lstm_kernel"].astype(np.float64)
        for p, sl in _split_rows(arch["step"], w, U).items():
            add(p, gates, w[_emb_name(p)] @ K[sl])
        bias = np.zeros(4 * U + H, np.float64)
        bias[gates] = w["lstm_bias"]
        W_rec = w["lstm_recurrent"].copy()
        W_heads = np.zeros((U, H), np.float32)
        # head -> ([(tokens drawn before it, their sizes, first row)], table of their hidden contributions)
        self.cur: dict[str, tuple] = {}
        self.out: dict[str, np.ndarray] = {}
        for j, head in enumerate(self.heads):
            c0 = 4 * U + j * hw
            cols = slice(c0, c0 + hid)
            bias[cols] = w[f"{head}_hidden_bias"]
            bias[c0 + hid] = 1.0
            Wk = w[f"{head}_hidden_kernel"]
            cur = {}
            for p, sl in _split_rows(arch["heads"][head], w, U).items():
                if p == "h":
                    W_heads[:, j * hw:j * hw + hid] = Wk[sl]
                elif p.startswith("cur_"):
                    cur[p[4:]] = w[_emb_name(p)].astype(np.float64) @ Wk[sl]
                else:
                    add(p, cols, w[_emb_name(p)].astype(np.float64) @ Wk[sl])
            toks = [t for t in TOKENS if t in cur]
            if set(toks) != set(cur) or any(TOKENS.index(t) >= TOKENS.index(head) for t in toks if head != "last"):
                raise ValueError(f"head {head!r} reads tokens not drawn before it")
            sizes = {t: len(cur[t]) for t in toks}
            groups = _groups(toks, sizes)
            tabs = [_joint_table(g, cur) for g in groups]
            table = np.zeros((sum(len(t) for t in tabs), hw), np.float32)  # the constant-1 unit gets nothing
            if tabs:
                table[:, :hid] = np.vstack(tabs)
            offs = np.cumsum([0] + [len(t) for t in tabs])[:-1]
            self.cur[head] = ([(g, [sizes[t] for t in g], int(o)) for g, o in zip(groups, offs)], table)
            Wo, bo = w[f"{head}_kernel"], w[f"{head}_bias"]
            Wa = np.vstack([Wo, bo[None, :]]).astype(np.float32)  # the constant-1 unit carries the bias
            if head in ("dir", "last"):  # one number: the logit of the first class, halved for tanh
                v = Wa[:, 1] - Wa[:, 0] if Wa.shape[1] == 2 else Wa[:, 0]
                self.out[head] = np.ascontiguousarray(v * 0.5)
            else:  # classes x hidden: logits come out transposed; padding classes never drawn
                pad = -Wa.shape[1] % PREFIX_BLOCK
                WT = np.zeros((Wa.shape[1] + pad, hw), np.float32)
                WT[:Wa.shape[1]] = Wa.T
                WT[Wa.shape[1]:, hid] = NEG
                self.out[head] = WT
        # halve the sigmoid gates (one tanh for all gates); the LSTM output is kept doubled
        scale = np.ones(4 * U + H)
        scale[:3 * U] = 0.5
        bias *= scale
        for p in contrib:
            contrib[p] *= scale
        W_rec[:, :3 * U] *= 0.5
        self.W_rec = np.ascontiguousarray(W_rec * 0.5, np.float32)
        # heads' products per head (heads x U x hidden): each head's pre-activations are contiguous
        self.W_heads = np.ascontiguousarray((W_heads * 0.5).reshape(U, -1, hw).transpose(1, 0, 2), np.float32)
        # input groups, one table row per group and flow at each step
        self.sizes = {p: len(t) for p, t in contrib.items()}
        flow = [p for p in ("app", "size") if p in contrib]
        stepc = [p for p in ("pos", "rem") if p in contrib]
        prev = [f"prev_{t}" for t in TOKENS if f"prev_{t}" in contrib]
        unknown = set(contrib) - set(flow) - set(stepc) - set(prev)
        if unknown:
            raise ValueError(f"inputs {sorted(unknown)} are not known to the sampler")
        contrib["_bias"] = bias[None, :]
        self.sizes["_bias"] = 1
        self.groups = [["_bias"] + flow] + ([stepc] if stepc else []) + _groups(prev, self.sizes)
        tables = [_joint_table(g, contrib) for g in self.groups]
        self.offsets = np.cumsum([0] + [len(t) for t in tables])[:-1].astype(np.int32)
        D = np.vstack(tables).astype(np.float32)
        self.D_gates = np.ascontiguousarray(D[:, :4 * U])
        self.D_heads = [np.ascontiguousarray(D[:, 4 * U + j * hw:4 * U + (j + 1) * hw]) for j in range(len(self.heads))]
        self.n_classes = {h: net.n_classes[h] for h in self.heads}

    def walk(self, app: np.ndarray, size: np.ndarray, target: np.ndarray, cap: np.ndarray, window: int, rng,
             pos_lut: np.ndarray, rem_lut: np.ndarray, bos: dict[str, int], block: int = BLOCK,
             threads: int | None = None):
        """Tokens of every packet of every flow, flow by flow: (lengths, tokens 4 x packets [dir, flag, code, gap]).

        ``target`` conditions the packets-remaining input, ``cap`` is a flow's most packets
        (the end-of-flow head may stop it sooner when ``want_last``); ``pos_lut[t]`` and
        ``rem_lut[k]`` are the position bucket of step t and the bucket of k packets remaining;
        ``bos`` the tokens before a flow's first packet. The LSTM state resets every ``window``
        steps. Uniform numbers: ``rng.random((m, 5), float32)`` per step over the m active
        flows in request order, as ``StepNet.step`` consumed them. ``threads`` (default
        ``sampling_threads()``): flows are split between threads, each walking its share; the
        tokens do not depend on it.
        """
        n = len(cap)
        cap = np.asarray(cap, np.int64)
        start = np.zeros(n + 1, np.int64)
        np.cumsum(cap, out=start[1:])
        total = int(start[-1])
        toks = np.empty((4, total), np.int32)
        length = cap.copy()
        if n == 0 or total == 0:
            return length, toks
        order = np.argsort(-cap, kind="stable")  # longest first: the active flows are a prefix
        vals = {"app": np.asarray(app, np.int32), "size": np.asarray(size, np.int32), "_bias": 0}
        g0 = _joint_index(self.groups[0], self.sizes, vals, np.empty(n, np.int32)) + self.offsets[0]
        flows = {"flow": order.astype(np.int64), "start": start[:-1][order], "tgt": np.asarray(target, np.int64)[order],
                 "cap": cap[order], "g0": g0[order]}
        threads = sampling_threads() if threads is None else max(int(threads), 1)
        if self.want_last or threads == 1 or n < 2 * block:
            self._walk_part(flows, toks, length, window, rng, None, cap, pos_lut, rem_lut, bos, block)
        else:
            # the flows active at step t are known in advance: draw every step's uniforms now, in
            # the order the steps draw them, and let each thread take its flows' rows
            steps = np.arange(int(cap.max()))
            m_t = n - np.searchsorted(np.sort(cap), steps, side="right")
            u_all = rng.random((int(m_t.sum()), 5), dtype=np.float32)
            u_at = np.concatenate([[0], np.cumsum(m_t)[:-1]])
            from concurrent.futures import ThreadPoolExecutor

            # every ``threads``-th flow by length: each thread gets its share of every step
            parts = [{k: a[i::threads].copy() for k, a in flows.items()} for i in range(threads)]
            with ThreadPoolExecutor(threads) as pool:
                done = [pool.submit(self._walk_part, part, toks, length, window, None, (u_all, u_at, m_t), cap,
                                    pos_lut, rem_lut, bos, block) for part in parts]
                for d in done:
                    d.result()
        if self.want_last and (length < cap).any():
            keep = np.repeat(length, cap) > (np.arange(total) - np.repeat(start[:-1], cap))
            toks = toks[:, keep]
        return length, toks

    def _walk_part(self, slot: dict, toks, length, window, rng, pre_u, cap_all, pos_lut, rem_lut, bos, block):
        """Walk the flows in ``slot`` (sorted longest first), writing their tokens into ``toks``.

        Uniforms: drawn from ``rng`` per step (all flows in this part), or taken from
        ``pre_u`` = (all steps' uniforms, first row of each step, active flows per step) by
        each flow's rank among all active flows (``cap_all``: every flow's length, in request order).
        """
        U = self.U
        n = len(slot["flow"])
        slot_flow, slot_start, slot_tgt, slot_cap, slot_g0 = (slot[k] for k in ("flow", "start", "tgt", "cap", "g0"))
        prev = {f"prev_{t}": np.full(n, bos[t], np.int32) for t in TOKENS}
        k = len(self.groups)
        idx = np.empty((n, k), np.int32)
        tmp32 = np.empty(n, np.int32)
        R = np.empty((n, 4 * U), np.float32)  # per slot: the recurrent term, then the gates in place
        C = np.empty((n, U), np.float32)  # per slot: the cell state
        B = min(block, n)
        hbuf = np.empty((B, U), np.float32)
        Z = np.empty((len(self.heads), B, self.hid + 1), np.float32)
        n_max = max(len(self.out[h]) if self.out[h].ndim == 2 else 1 for h in self.heads)
        L = np.empty(n_max * B, np.float32)
        less = np.empty(n_max * B, bool)
        drawn_rows = np.empty(B * 4, np.int32)  # rows of the heads' tables of tokens drawn at this step
        sum_g = _RowSums(self.D_gates, k, B)
        sum_h = [(_RowSums(d, k, B), _RowSums(self.cur[h][1], max(len(self.cur[h][0]), 1), B))
                 for d, h in zip(self.D_heads, self.heads)]
        m = n
        urank, m_all = None, -1
        for t in range(int(slot_cap[0])):
            if t % window == 0:
                R[:m] = 0.0
                C[:m] = 0.0
            # every group's row for each active flow
            idx[:m, 0] = slot_g0[:m]
            j = 1
            if "pos" in self.sizes or "rem" in self.sizes:
                v = {"pos": int(pos_lut[t])}
                if "rem" in self.sizes:
                    np.subtract(slot_tgt[:m], t + 1, out=tmp32[:m], casting="unsafe")
                    v["rem"] = rem_lut[tmp32[:m]]
                col = idx[:m, 1]
                _joint_index(self.groups[1], self.sizes, v, col)
                col += self.offsets[1]
                j = 2
            for g, off in zip(self.groups[j:], self.offsets[j:]):
                col = idx[:m, j]
                _joint_index(g, self.sizes, prev, col)
                col += off
                j += 1
            if pre_u is None:
                if urank is None:  # the active flows' ranks in request order: which uniforms are theirs
                    mask = np.zeros(len(cap_all), bool)
                    mask[slot_flow[:m]] = True
                    urank = (np.cumsum(mask) - 1)[slot_flow[:m]]
                u = rng.random((m, 5), dtype=np.float32)[urank]
            else:
                u_all, u_at, m_t = pre_u
                if urank is None or m_t[t] != m_all:  # the flows active in all parts changed
                    m_all = m_t[t]
                    urank = (np.cumsum(cap_all > t) - 1)[slot_flow[:m]]
                u = u_all[u_at[t] + urank]
            new = {name: np.empty(m, np.int32) for name in TOKENS}
            last = np.zeros(m, bool) if self.want_last else None
            nb = -(-m // B)
            step = -(-m // nb)  # blocks of equal size, none left small
            for b0 in range(0, m, step):
                b1 = min(b0 + step, m)
                self._block(b0, b1, idx, R, C, hbuf, Z, L, less, drawn_rows, u, sum_g, sum_h, new, last)
            at = slot_start[:m] + t
            for i, name in enumerate(TOKENS):
                toks[i, at] = new[name]
            prev = {f"prev_{name}": a for name, a in new.items()}
            # who goes on: flows shorter than t + 2 end here (a suffix); with the end-of-flow head, any
            m_next = int(np.searchsorted(-slot_cap[:m], -(t + 1), side="left"))
            if last is not None and last[:m_next].any():
                keep = np.flatnonzero(~last[:m_next])
                length[slot_flow[:m_next][last[:m_next]]] = t + 1
                for a in (slot_flow, slot_start, slot_tgt, slot_cap, slot_g0):
                    a[:len(keep)] = a[keep]
                R[:len(keep)], C[:len(keep)] = R[keep], C[keep]
                prev = {p: a[keep] for p, a in prev.items()}
                m_next = len(keep)
                urank = None
            elif m_next < m:
                prev = {p: a[:m_next] for p, a in prev.items()}
                urank = None
            m = m_next
            if m == 0:
                break

    def _block(self, b0, b1, idx, R, C, hbuf, Z, L, less, drawn_rows, u, sum_g, sum_h, new, last):
        """One step for active slots b0..b1: LSTM, then each head draws its token."""
        U, hid, hw = self.U, self.hid, self.hid + 1
        m = b1 - b0
        ib = idx[b0:b1]
        g = R[b0:b1]
        sum_g.add(ib, g)
        np.tanh(g, out=g)
        ti, tf, to, cg = g[:, :U], g[:, U:2 * U], g[:, 2 * U:3 * U], g[:, 3 * U:]
        g[:, :3 * U] += 1.0  # 2 * sigmoid of the input, forget and output gates
        c = C[b0:b1]
        c *= tf
        ti *= cg
        c += ti
        c *= 0.5  # c = f * c + i * g, exactly (the halving is exact)
        h = hbuf[:m]
        np.tanh(c, out=h)
        h *= to  # twice the LSTM output; the weights it meets are halved
        np.matmul(h, self.W_rec, out=g)  # the next step's recurrent term
        np.matmul(h, self.W_heads, out=Z[:, :m])
        ub = u[b0:b1]
        drawn = {}
        for j, head in enumerate(self.heads):
            z = Z[j, :m]
            add_inputs, add_drawn = sum_h[j]
            add_inputs.add(ib, z)
            groups, table = self.cur[head]
            if groups:
                rows = drawn_rows[:m * len(groups)].reshape(m, len(groups))
                for i, (toks, sizes, off) in enumerate(groups):
                    row = rows[:, i]
                    row[:] = drawn[toks[0]]
                    for t, s in zip(toks[1:], sizes[1:]):
                        row *= s
                        row += drawn[t]
                    if off:
                        row += off
                add_drawn.add(rows, z)
            np.maximum(z, 0.0, out=z)
            if head in ("dir", "last"):
                x = z @ self.out[head]
                np.tanh(x, out=x)  # sigmoid(logit) > u  <=>  tanh(logit / 2) > 2u - 1
                k = x > ub[:, j] * 2.0 - 1.0
                if head == "last":
                    last[b0:b1] = k
                    break
                drawn[head] = k.astype(np.int32)
            else:
                drawn[head] = self._draw(self.out[head], self.n_classes[head], z, ub[:, j], L, less)
            new[head][b0:b1] = drawn[head]

    @staticmethod
    def _draw(WT: np.ndarray, n_cls: int, z: np.ndarray, u: np.ndarray, L: np.ndarray, less: np.ndarray) -> np.ndarray:
        """One class per row of ``z``: softmax(WT @ z.T) inverted at ``u`` (``WT`` padded to whole blocks)."""
        m = len(z)
        if n_cls == 1:
            return np.zeros(m, np.int32)
        rows = len(WT)
        lt = L[:rows * m].reshape(rows, m)
        np.matmul(WT, z.T, out=lt)
        lt -= lt.max(axis=0)
        np.exp(lt, out=lt)
        if m >= LOOP_CUMSUM_ROWS and rows % PREFIX_BLOCK == 0:
            k = _invert_blocked(lt, u, less)
        else:
            _prefix_sums(lt)
            thr = u * lt[-1]
            b = less[:rows * m].reshape(rows, m)
            np.less(lt, thr, out=b)
            k = np.add.reduce(b.view(np.uint8), axis=0, dtype=np.uint8 if rows < 256 else np.int32).astype(np.int32)
        np.minimum(k, n_cls - 1, out=k)
        return k


def _invert_blocked(x: np.ndarray, u: np.ndarray, work: np.ndarray) -> np.ndarray:
    """Per column of ``x`` (classes x flows, non-negative weights), the number of entries of its
    cumulative sum (as ``_prefix_sums`` computes it, in two levels) below ``u`` times its total.

    The cumulative sums are monotone, so only the blocks' totals and the one block where ``u``
    falls are needed: the totals say which block, and that block's ``PREFIX_BLOCK`` sums are
    rebuilt for each column with the same additions in the same order, so the count (hence the
    class drawn) is the one the full cumulative sum gives, bit for bit, at a fraction of the
    passes over memory. ``work``: scratch of at least ``x.size`` bytes."""
    rows, m = x.shape
    b = PREFIX_BLOCK
    nb = rows // b
    xb = x.reshape(nb, b, m)
    ends = np.frombuffer(work, np.float32, nb * m).reshape(nb, m) if work.nbytes >= 4 * nb * m \
        else np.empty((nb, m), np.float32)
    np.add.reduce(xb, axis=1, out=ends)  # each block's total: its values added in order (its last prefix sum)
    for i in range(1, nb):  # the totals' running sums: the last prefix sum of each block
        ends[i] += ends[i - 1]
    thr = u * ends[-1]
    j = np.add.reduce((ends < thr).view(np.uint8), axis=0, dtype=np.int32)  # the block where u falls
    col = np.arange(m)
    base = np.zeros(m, np.float32)  # the running sum before block j (none for the first block)
    after = np.flatnonzero(j)
    base[after] = ends.reshape(-1)[(j[after] - 1) * m + after]
    # block j's values per column (b x m), their running sums, offset by the blocks before
    run = x.reshape(-1)[(j * (b * m) + col)[None, :] + (np.arange(b) * m)[:, None]]
    for i in range(1, b):  # (numpy's cumsum down columns does not vectorize: row adds)
        run[i] += run[i - 1]
    run += base
    k = np.add.reduce((run < thr).view(np.uint8), axis=0, dtype=np.int32)
    k += j * b
    return k


def _prefix_sums(lt: np.ndarray) -> None:
    """Cumulative sums down the columns, in place. numpy's cumsum over the first axis does not
    vectorize over the second; for many columns, whole-row adds in two levels (within blocks of
    ``PREFIX_BLOCK`` rows, then the blocks' totals) take few calls."""
    rows, m = lt.shape
    if m < LOOP_CUMSUM_ROWS or rows % PREFIX_BLOCK:
        np.cumsum(lt, axis=0, out=lt)
        return
    b = PREFIX_BLOCK
    x = lt.reshape(rows // b, b, m)
    for i in range(1, b):
        np.add(x[:, i], x[:, i - 1], out=x[:, i])
    ends = x[:, b - 1]
    for i in range(1, rows // b):
        np.add(ends[i], ends[i - 1], out=ends[i])
    if rows > b:
        x[1:, :b - 1] += ends[:-1, None, :]
