/**
 * The Jobs section: a status filter and one row per job with its progress,
 * main metric, world size and actions.
 */

import { Clipboard } from '@jupyterlab/apputils';
import { CommandRegistry } from '@lumino/commands';
import React, { useState } from 'react';

import { Bar } from './bar';
import { CommandIDs } from './commands';
import { confirmAction, notifyError, notifySuccess } from './dialogs';
import {
  formatDuration,
  formatEta,
  formatMetric,
  formatPercent,
  jobFraction,
  mainMetric,
  reattachLine
} from './format';
import { TrainingModel } from './model';
import { useResource } from './resourcesview';
import { IJobRecord, isActive, JOB_STATUSES, JobStatus } from './wire';

/**
 * Props of the `JobsSection`.
 */
export interface IJobsSectionProps {
  /**
   * The panel's model.
   */
  model: TrainingModel;

  /**
   * The application's commands, to open logs and charts.
   */
  commands: CommandRegistry;
}

/**
 * The collapsible Jobs section.
 */
export function JobsSection(props: IJobsSectionProps): JSX.Element {
  const { model, commands } = props;
  const list = useResource(model.jobs);
  const jobs = list?.jobs ?? [];
  const filter = model.statusFilter;
  const shown = filter ? jobs.filter(job => job.status === filter) : jobs;
  return (
    <details className="tml-Section tml-JobsSection" open>
      <summary className="tml-SectionTitle">
        Jobs{list ? ` (${list.total})` : ''}
      </summary>
      <label className="tml-Filter">
        <span>Status</span>
        <select
          aria-label="Show jobs with status"
          value={filter ?? ''}
          onChange={event => {
            const value = event.target.value;
            model.statusFilter = value === '' ? null : (value as JobStatus);
          }}
        >
          <option value="">all</option>
          {JOB_STATUSES.map(status => (
            <option key={status} value={status}>
              {status}
            </option>
          ))}
        </select>
      </label>
      {list === null ? (
        <p className="tml-Empty">No jobs loaded yet.</p>
      ) : shown.length === 0 ? (
        <p className="tml-Empty">
          {filter
            ? `No ${filter} job.`
            : 'No job yet. Launch one from a notebook with tml.launch(...).'}
        </p>
      ) : (
        <ul className="tml-JobList" aria-label="Jobs">
          {shown.map(job => (
            <JobRow key={job.id} job={job} model={model} commands={commands} />
          ))}
        </ul>
      )}
    </details>
  );
}

/**
 * Props of one job row.
 */
interface IJobRowProps {
  job: IJobRecord;
  model: TrainingModel;
  commands: CommandRegistry;
}

function JobRow(props: IJobRowProps): JSX.Element {
  const { job, model, commands } = props;
  const [busy, setBusy] = useState(false);
  const label = job.name ? `${job.name} (${job.id})` : job.id;
  const fraction = jobFraction(job);
  const eta = job.status === 'running' ? formatEta(job.progress?.eta) : '';
  const metric = mainMetric(job);
  const worldSize = job.world_size ?? null;

  const onCancel = async (): Promise<void> => {
    const accepted = await confirmAction(
      'Cancel job?',
      `Cancel ${label}? Its processes are stopped and it cannot be resumed.`,
      'Cancel job',
      true
    );
    if (!accepted) {
      return;
    }
    setBusy(true);
    try {
      await model.cancelJob(job.id);
      notifySuccess(`Cancelled job ${label}.`);
    } catch (error) {
      notifyError(`Cancel job ${label}`, error);
    } finally {
      setBusy(false);
    }
  };

  const onCopy = (): void => {
    Clipboard.copyToSystem(reattachLine(job.id));
    notifySuccess(`Copied ${reattachLine(job.id)} to the clipboard.`);
  };

  return (
    <li
      className={`tml-Job tml-mod-${job.status}`}
      data-job-id={job.id}
      data-status={job.status}
    >
      <div className="tml-JobHeader">
        <span className="tml-JobName" title={job.id}>
          {job.name || job.id}
        </span>
        <span className={`tml-Status tml-mod-${job.status}`}>{job.status}</span>
      </div>
      <Bar
        className={`tml-mod-${job.status}`}
        fraction={fraction}
        label={[formatPercent(fraction), eta].filter(Boolean).join(' · ')}
        ariaLabel={`Progress of job ${label}`}
      />
      <div className="tml-JobFacts">
        <span className="tml-Mono">{job.id}</span>
        {metric && (
          <span className="tml-Metric" title="Latest value of the main metric">
            {metric.key} {formatMetric(metric.value)}
          </span>
        )}
        {worldSize !== null && (
          <span title="Number of ranks">world {worldSize}</span>
        )}
        {job.status === 'queued' && typeof job.queue_position === 'number' && (
          <span>queue #{job.queue_position}</span>
        )}
        {!isActive(job.status) && job.started_at && job.ended_at && (
          <span title="Run time">
            {formatDuration(job.ended_at - job.started_at)}
          </span>
        )}
      </div>
      {job.reason && <div className="tml-Reason">{job.reason}</div>}
      {job.error?.message && (
        <div className="tml-Reason tml-mod-error">
          {job.error.rank !== null && job.error.rank !== undefined
            ? `rank ${job.error.rank}: `
            : ''}
          {job.error.message}
        </div>
      )}
      <div
        className="tml-Actions"
        role="group"
        aria-label={`Actions for job ${label}`}
      >
        {isActive(job.status) && (
          <button
            className="tml-Button tml-mod-warn"
            aria-label={`Cancel job ${label}`}
            disabled={busy}
            onClick={() => void onCancel()}
          >
            Cancel
          </button>
        )}
        <button
          className="tml-Button"
          aria-label={`Open the logs of job ${label}`}
          onClick={() =>
            void commands.execute(CommandIDs.openLogs, {
              id: job.id,
              name: job.name ?? ''
            })
          }
        >
          Logs
        </button>
        <button
          className="tml-Button"
          aria-label={`Open the live chart of job ${label}`}
          onClick={() =>
            void commands.execute(CommandIDs.openChart, {
              id: job.id,
              name: job.name ?? ''
            })
          }
        >
          Chart
        </button>
        <button
          className="tml-Button"
          aria-label={`Copy the line that re-attaches to job ${label}`}
          title={reattachLine(job.id)}
          onClick={onCopy}
        >
          Copy
        </button>
      </div>
    </li>
  );
}
