/**
 * The qrexec services qrexec-ts installs in every qube and in dom0 (the
 * repository's qubes-rpc/ directory): qube services in qubes-rpc/qube, their
 * configuration in qubes-rpc/qube-config, dom0's in qubes-rpc/dom0. A qube's
 * own directories come first on its search paths, so a qube can override
 * any of them.
 */
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export const QUBE_SERVICE_DIR = path.join(ROOT, 'qubes-rpc', 'qube');
export const QUBE_CONFIG_DIR = path.join(ROOT, 'qubes-rpc', 'qube-config');
export const DOM0_SERVICE_DIR = path.join(ROOT, 'qubes-rpc', 'dom0');
