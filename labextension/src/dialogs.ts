/**
 * Confirmation dialogs and error notifications shared by the panel's sections.
 */

import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';

import { ApiError } from './api';

/**
 * Ask the user to confirm an action; resolves `true` when accepted.
 *
 * @param title - the dialog title, naming the action.
 * @param body - one or two sentences saying what will happen.
 * @param accept - the label of the accepting button.
 * @param warn - whether the action is destructive.
 */
export async function confirmAction(
  title: string,
  body: string,
  accept: string,
  warn = false
): Promise<boolean> {
  const result = await showDialog({
    title,
    body,
    buttons: [
      Dialog.cancelButton({ label: 'Cancel' }),
      warn
        ? Dialog.warnButton({ label: accept })
        : Dialog.okButton({ label: accept })
    ]
  });
  return result.button.accept;
}

/**
 * Show an error as a JupyterLab notification.
 *
 * @param action - what was being done, e.g. `Cancel job 3f9a1c2b7d10`.
 * @param error - the error that stopped it.
 */
export function notifyError(action: string, error: unknown): void {
  let message: string;
  if (error instanceof ApiError) {
    message =
      error.detail && !error.extensionMissing && !error.unreachable
        ? `${error.message} ${error.detail}`
        : error.message;
  } else if (error instanceof Error) {
    message = error.message;
  } else {
    message = String(error);
  }
  Notification.error(`${action} failed: ${message}`, { autoClose: 8000 });
}

/**
 * Show a short success notification.
 */
export function notifySuccess(message: string): void {
  Notification.success(message, { autoClose: 3000 });
}
