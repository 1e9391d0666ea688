/**
 * A horizontal meter with a label, used for CPU, memory, GPU and job progress.
 */

import React from 'react';

/**
 * Props of a `Bar`.
 */
export interface IBarProps {
  /**
   * The filled fraction in [0, 1], or `null` when unknown.
   */
  fraction: number | null;

  /**
   * The text shown on the bar.
   */
  label: string;

  /**
   * What the bar measures, for assistive technology.
   */
  ariaLabel: string;

  /**
   * An extra class, e.g. for the status colour of a job.
   */
  className?: string;
}

/**
 * A meter drawn with two nested boxes and the ARIA meter role.
 */
export function Bar(props: IBarProps): JSX.Element {
  const fraction =
    props.fraction === null ? null : Math.min(1, Math.max(0, props.fraction));
  const percent = fraction === null ? 0 : Math.round(fraction * 1000) / 10;
  return (
    <div
      className={`tml-Bar ${props.className ?? ''}`}
      role="progressbar"
      aria-label={props.ariaLabel}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={fraction === null ? undefined : percent}
      aria-valuetext={props.label}
    >
      <div className="tml-Bar-fill" style={{ width: `${percent}%` }} />
      <span className="tml-Bar-label">{props.label}</span>
    </div>
  );
}
