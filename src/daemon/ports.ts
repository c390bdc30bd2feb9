import { MAX_DATA_PORTS, VCHAN_BASE_DATA_PORT } from '../protocol/index.js';

/**
 * Data-port allocation as the reference daemon does it: 256 ports from 513;
 * for a connection to dom0 any free port, otherwise odd offsets when the peer
 * has the larger domain id and even ones when it has the smaller, so the two
 * daemons of a qube pair never hand out the same port. A port remembers the
 * peer domain it was given for and is released only for that domain.
 */
export class PortAllocator {
  private readonly used: (number | undefined)[] = new Array<number | undefined>(MAX_DATA_PORTS).fill(undefined);

  constructor(private readonly ownDomain: number) {}

  /** A free port for a connection with `peerDomain`, or 0 when none is left. */
  allocate(peerDomain: number): number {
    let i = 0;
    let step = 1;
    if (peerDomain !== 0) {
      i = peerDomain > this.ownDomain ? 1 : 0;
      step = 2;
    }
    for (; i < MAX_DATA_PORTS; i += step) {
      if (this.used[i] === undefined) {
        this.used[i] = peerDomain;
        return VCHAN_BASE_DATA_PORT + i;
      }
    }
    return 0;
  }

  /** True when `port` is a data port this allocator could hand out. */
  static inRange(port: number): boolean {
    return port >= VCHAN_BASE_DATA_PORT && port < VCHAN_BASE_DATA_PORT + MAX_DATA_PORTS;
  }

  /** Frees `port` if it was allocated for `peerDomain`; returns whether it was. */
  release(port: number, peerDomain: number): boolean {
    const i = port - VCHAN_BASE_DATA_PORT;
    if (i < 0 || i >= MAX_DATA_PORTS || this.used[i] !== peerDomain) return false;
    this.used[i] = undefined;
    return true;
  }
}
