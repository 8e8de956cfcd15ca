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

``arch`` names the network's parts: ``step`` the LSTM's inputs in order, ``heads`` each head's
inputs in order (``h`` = the LSTM output, ``cur_X`` = the token X just drawn at this step,
``prev_X`` = the previous packet's token X, anything else = a condition). Token names: dir,
flag, code, gap; their embeddings are ``e_<token>``, a condition's is ``e_<name>``.
"""
from __future__ import annotations

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
