/**
 * The Resources section: per node CPU and memory bars, one row per GPU with
 * its utilisation, memory and holder, and the scheduler's queue.
 */

import React, { useEffect, useState } from 'react';

import { Bar } from './bar';
import { formatBytes } from './format';
import { describeHolder } from './normalize';
import type { PolledResource } from './poller';
import type { IGpu, INode, IQueueEntry, IResources } from './wire';

/**
 * Props of the `ResourcesSection`.
 */
export interface IResourcesSectionProps {
  /**
   * The polled inventory.
   */
  resource: PolledResource<IResources>;
}

/**
 * The collapsible Resources section.
 */
export function ResourcesSection(props: IResourcesSectionProps): JSX.Element {
  const resources = useResource(props.resource);
  const nodes = resources?.nodes ?? [];
  const queue = resources?.queue ?? [];
  return (
    <details className="tml-Section tml-ResourcesSection" open>
      <summary className="tml-SectionTitle">Resources</summary>
      {resources?.error && (
        <div className="tml-Banner tml-mod-warning" role="alert">
          {resources.error}
        </div>
      )}
      {resources === null ? (
        <p className="tml-Empty">No inventory yet.</p>
      ) : nodes.length === 0 ? (
        <p className="tml-Empty">The inventory lists no node.</p>
      ) : (
        nodes.map(node => <NodeView key={node.name} node={node} />)
      )}
      {resources !== null && <SlotsView resources={resources} />}
      {resources !== null && <QueueView queue={queue} />}
    </details>
  );
}

function NodeView(props: { node: INode }): JSX.Element {
  const { node } = props;
  const gpus = node.gpus ?? [];
  const cpuFraction =
    typeof node.cpu_percent === 'number' ? node.cpu_percent / 100 : null;
  const memFraction =
    typeof node.memory_total === 'number' &&
    typeof node.memory_used === 'number' &&
    node.memory_total > 0
      ? node.memory_used / node.memory_total
      : null;
  const cpuLabel =
    cpuFraction === null
      ? 'CPU –'
      : `CPU ${Math.round(node.cpu_percent as number)}%` +
        (node.cpu_count ? ` of ${node.cpu_count}` : '');
  const memLabel = `Memory ${formatBytes(node.memory_used)} / ${formatBytes(node.memory_total)}`;
  return (
    <div className="tml-Node" data-node={node.name}>
      <div className="tml-NodeName">{node.name}</div>
      <Bar
        fraction={cpuFraction}
        label={cpuLabel}
        ariaLabel={`CPU use of ${node.name}`}
      />
      <Bar
        fraction={memFraction}
        label={memLabel}
        ariaLabel={`Memory use of ${node.name}`}
      />
      {gpus.length === 0 ? (
        <div className="tml-Muted">
          No GPU
          {typeof node.gpu_error === 'string' && node.gpu_error
            ? ` (${node.gpu_error})`
            : ''}
        </div>
      ) : (
        gpus.map(gpu => (
          <GpuView key={gpu.index} gpu={gpu} nodeName={node.name} />
        ))
      )}
    </div>
  );
}

function GpuView(props: { gpu: IGpu; nodeName: string }): JSX.Element {
  const { gpu, nodeName } = props;
  const util =
    typeof gpu.utilization === 'number' ? gpu.utilization / 100 : null;
  const mem =
    typeof gpu.memory_total === 'number' &&
    typeof gpu.memory_used === 'number' &&
    gpu.memory_total > 0
      ? gpu.memory_used / gpu.memory_total
      : null;
  const holder = describeHolder(gpu.holder);
  return (
    <div className="tml-Gpu">
      <div className="tml-GpuName">
        GPU {gpu.index}
        {gpu.name ? ` · ${gpu.name}` : ''}
        <span className="tml-GpuHolder">
          {holder ? `held by ${holder}` : 'free'}
        </span>
      </div>
      <Bar
        fraction={util}
        label={util === null ? 'Util –' : `Util ${Math.round(util * 100)}%`}
        ariaLabel={`Utilisation of GPU ${gpu.index} on ${nodeName}`}
      />
      <Bar
        fraction={mem}
        label={`Mem ${formatBytes(gpu.memory_used)} / ${formatBytes(gpu.memory_total)}`}
        ariaLabel={`Memory of GPU ${gpu.index} on ${nodeName}`}
      />
    </div>
  );
}

function SlotsView(props: { resources: IResources }): JSX.Element | null {
  const capacity = props.resources.capacity ?? {};
  const allocations = props.resources.allocations ?? [];
  if (typeof capacity.cpu_slots !== 'number' || capacity.cpu_slots <= 0) {
    return null;
  }
  const used = capacity.cpu_slots_used ?? 0;
  const holders = allocations
    .filter(entry => (entry.allocation?.cpu_slots ?? 0) > 0)
    .map(entry => {
      const id = entry.job_id ?? '?';
      return `${entry.name ? `${entry.name} (${id})` : id} ×${entry.allocation?.cpu_slots}`;
    });
  return (
    <div className="tml-Slots">
      <Bar
        fraction={used / capacity.cpu_slots}
        label={`CPU job slots ${used} / ${capacity.cpu_slots}`}
        ariaLabel="CPU job slots in use"
      />
      {holders.length > 0 && (
        <div className="tml-Muted">held by {holders.join(', ')}</div>
      )}
    </div>
  );
}

function QueueView(props: { queue: IQueueEntry[] }): JSX.Element {
  const { queue } = props;
  if (queue.length === 0) {
    return <div className="tml-Muted tml-Queue">Queue empty</div>;
  }
  return (
    <div className="tml-Queue">
      <div className="tml-SubTitle">Queue ({queue.length})</div>
      <ol className="tml-QueueList">
        {queue.map((entry, index) => {
          const id = entry.job_id ?? entry.id ?? `#${index}`;
          return (
            <li key={id}>
              <span className="tml-Mono">{id}</span>
              {entry.name ? ` ${entry.name}` : ''}
              {entry.reason ? (
                <span className="tml-Muted"> – {entry.reason}</span>
              ) : null}
            </li>
          );
        })}
      </ol>
    </div>
  );
}

/**
 * The latest value of a polled resource, re-rendering when it changes.
 */
export function useResource<T>(resource: PolledResource<T>): T | null {
  const [value, setValue] = useState<T | null>(resource.value);
  useEffect(() => {
    const onChange = (_: unknown, next: T): void => setValue(next);
    resource.changed.connect(onChange);
    setValue(resource.value);
    return () => {
      resource.changed.disconnect(onChange);
    };
  }, [resource]);
  return value;
}
